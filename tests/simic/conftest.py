import pytest

from tests.simic.toys import toy_data


@pytest.fixture(scope="session")
def toy():
    return toy_data()


@pytest.fixture(scope="session")
def synthetic_small():
    from esper.data.splits import load_data

    return load_data("synthetic", limit=600, progress=False)
