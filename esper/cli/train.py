"""`esper train`: not available yet."""


def add_arguments(p) -> None:
    pass


def run(args) -> int:
    raise SystemExit("esper train is not available yet")
