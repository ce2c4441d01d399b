"""eval.json is written by separate `qkvlab eval` calls: none may erase what another wrote."""

import json

from qkvlab.infer.evaluate_run import update_eval_file
from qkvlab.rundir import load_run


def test_an_eval_that_read_eval_json_earlier_keeps_what_another_wrote_since(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps({"results": [{"context": 32}], "tasks": {"piqa": {"acc": 0.6}}}))
    slow, fast = load_run(tmp_path), load_run(tmp_path)
    assert slow.evaluation["tasks"] == {"piqa": {"acc": 0.6}}  # read when it started
    update_eval_file(fast, {"tasks": {"sciq": {"acc": 0.7}}, "heldout": {"a.txt": {"loss": 1.0}}})
    update_eval_file(slow, {"tasks": {"arc_easy": {"acc": 0.5}}, "heldout": {"b.txt": {"loss": 2.0}}})
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written["tasks"] == {"piqa": {"acc": 0.6}, "sciq": {"acc": 0.7}, "arc_easy": {"acc": 0.5}}
    assert written["heldout"] == {"a.txt": {"loss": 1.0}, "b.txt": {"loss": 2.0}}
    assert written["results"] == [{"context": 32}]
    update_eval_file(slow, {"results": [{"context": 64}]})
    assert json.loads((tmp_path / "eval.json").read_text())["results"] == [{"context": 64}]
