import pytest

from components.kit.promotion import CHALLENGER, CHAMPION, RollbackError, champion_stack, event, rollback_target


def moves(*pairs):
    return [event(alias, version, action, by="test", reason="r") for alias, version, action in pairs]


def test_event_records_who_why_and_when():
    e = event(
        CHAMPION,
        3,
        "set",
        by="alice@box (miniaturize promote)",
        reason="better",
        forced=True,
        failed_checks=["size_ratio"],
    )
    assert e["version"] == "3" and e["forced"] is True and e["failed_checks"] == ["size_ratio"]
    assert e["at"].endswith("Z") and e["by"].startswith("alice")


def test_stack_follows_sets_and_rollbacks_and_ignores_other_aliases():
    history = moves(
        (CHAMPION, 1, "set"), (CHALLENGER, 2, "set"), (CHAMPION, 3, "set"), (CHAMPION, 3, "set"), (CHAMPION, 4, "set")
    )
    assert champion_stack(history) == ["1", "3", "4"]
    assert rollback_target(history, "4") == "3"
    history += moves((CHAMPION, 3, "rollback"))
    assert champion_stack(history) == ["1", "3"]
    # a second rollback goes further back, not forth again to 4
    assert rollback_target(history, "3") == "1"


def test_rollback_refuses_without_a_previous_champion_or_with_a_mismatched_history():
    with pytest.raises(RollbackError, match="first champion"):
        rollback_target(moves((CHAMPION, 1, "set")), "1")
    with pytest.raises(RollbackError, match="no champion"):
        rollback_target([], None)
    with pytest.raises(RollbackError, match="registry's champion is version 7"):
        rollback_target(moves((CHAMPION, 1, "set"), (CHAMPION, 2, "set")), "7")
