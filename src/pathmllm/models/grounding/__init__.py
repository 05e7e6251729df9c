"""MedPLIB: region prompts, [SEG] grounding, mask decoder, Mixture-of-Experts."""
