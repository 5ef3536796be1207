import pidsafe


def test_all_names_exist() -> None:
    for name in pidsafe.__all__:
        assert hasattr(pidsafe, name), name
