"""`esper export`: not available yet."""


def add_arguments(p) -> None:
    pass


def run(args) -> int:
    raise SystemExit("esper export is not available yet")
