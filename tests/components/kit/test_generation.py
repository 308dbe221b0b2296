from components.kit.generation import cut_at_eos


def test_cut_at_eos():
    assert cut_at_eos([3, 4, 0, 5, 0], 0) == [3, 4]
    assert cut_at_eos([3, 4], 0) == [3, 4]
    assert cut_at_eos([3, 4], None) == [3, 4]
