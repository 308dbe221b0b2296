import io

from tqdm import tqdm

from components.kit.progress import Lines, progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_it_prints_plain_lines_with_the_postfix_and_a_closing_line():
    out = io.StringIO()
    bar = progress(range(5), "distill epoch 1/2", unit="batch", every=2, stream=out)
    assert isinstance(bar, Lines)
    seen = []
    for item in bar:
        seen.append(item)
        bar.set_postfix(loss=f"{item / 10:.4f}", refresh=False)
    bar.close()  # after the loop, as the training loop does: no second closing line
    assert seen == [0, 1, 2, 3, 4]
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 3, text
    assert lines[0].startswith("  distill epoch 1/2: 2/5 batch, ") and lines[0].endswith(", loss=0.1000")
    assert lines[1].startswith("  distill epoch 1/2: 4/5 batch, ") and lines[1].endswith(", loss=0.3000")
    assert lines[2].startswith("  distill epoch 1/2: done, 5 batch in ") and lines[2].endswith(", loss=0.4000")
    assert "batch/s" in lines[2] or "s/batch" in lines[2]


def test_update_and_a_text_postfix_without_an_iterable_and_a_line_every_so_many_seconds():
    out = io.StringIO()
    with progress(None, "evaluate latency", total=3, unit="share", seconds=0.0, stream=out) as bar:
        for name in ("teacher", "final", "baseline"):
            bar.update(1)
            bar.set_postfix_str(f"round 1: {name} p50 1.00 ms")
    lines = out.getvalue().splitlines()
    assert [line.split(": ", 2)[1].split(",")[0] for line in lines] == ["1/3 share", "2/3 share", "done"]
    assert lines[-1].endswith(", round 1: baseline p50 1.00 ms") and "\r" not in out.getvalue()


def test_a_loop_that_fails_prints_no_closing_line_and_disable_prints_nothing():
    out = io.StringIO()
    try:
        for item in progress([1, 2, 3], "score", unit="model", every=1, stream=out):
            if item == 2:
                raise ValueError("boom")
    except ValueError:
        pass
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("  score: 1/3 model, ")  # the line after item 1 only

    quiet = io.StringIO()
    bar = progress(range(3), "rank 1", every=1, disable=True, stream=quiet)
    assert list(bar) == [0, 1, 2]
    bar.set_postfix(loss="0.1", refresh=False)
    bar.close()
    assert quiet.getvalue() == ""


def test_on_a_terminal_it_is_a_live_tqdm_bar():
    out = FakeTerminal()
    bar = progress(range(3), "distill epoch 1/2", stream=out)
    assert isinstance(bar, tqdm)
    for _ in bar:
        bar.set_postfix(loss="0.5000", refresh=False)
    bar.close()
    assert "distill epoch 1/2" in out.getvalue()  # drawn on the terminal, then cleared (leave=False)
