"""`esper grow`: not available yet."""


def add_arguments(p) -> None:
    pass


def run(args) -> int:
    raise SystemExit("esper grow is not available yet")
