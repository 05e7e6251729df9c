"""``python -m pathmllm`` (and ``accelerate launch -m pathmllm ...``) runs the CLI."""

from pathmllm.cli.main import main

if __name__ == "__main__":
    main()
