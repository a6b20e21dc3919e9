"""`esper report`: not available yet."""


def add_arguments(p) -> None:
    pass


def run(args) -> int:
    raise SystemExit("esper report is not available yet")
