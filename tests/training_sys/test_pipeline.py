"""阶段流水线：跳过、输入变化重做、产物损坏重做、截断的指纹、链式失效、中断不留指纹、--fresh。"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training_sys.pipeline import Pipeline, StageInterrupted, digest
from utils.io import atomic_write


class Counter:
    """记下每个阶段真正执行了几次的阶段函数工厂。"""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.calls: dict[str, int] = {}

    def writer(self, name: str, content: str):
        def run():
            self.calls[name] = self.calls.get(name, 0) + 1
            return [atomic_write(self.run_dir / f"{name}.txt", content)], {"content": content}
        return run


def two_stages(run_dir: Path, counter: Counter, a_input: int = 1, a_content: str = "A", fresh: bool = False):
    pipe = Pipeline(run_dir, fresh=fresh)
    a = pipe.stage("a", {"x": a_input}, counter.writer("a", a_content))
    b = pipe.stage("b", {"a": a["fingerprint"]}, counter.writer("b", "B"))
    return pipe, a, b


def test_second_run_skips_and_returns_the_recorded_result(tmp_path):
    counter = Counter(tmp_path)
    _, a1, b1 = two_stages(tmp_path, counter)
    pipe, a2, b2 = two_stages(tmp_path, counter)
    assert counter.calls == {"a": 1, "b": 1}
    assert (a2["skipped"], b2["skipped"]) == (True, True) and (a1["skipped"], b1["skipped"]) == (False, False)
    assert a2["result"] == {"content": "A"} and a2["fingerprint"] == a1["fingerprint"]
    assert list(pipe.records) == ["a", "b"]
    rec = json.loads((tmp_path / "stages" / "a.json").read_text(encoding="utf-8"))
    assert rec["outputs"] == {"a.txt": a1["outputs"]["a.txt"]}  # run_dir 里的产物记相对路径
    assert rec["inputs_digest"] == digest({"x": 1})


def test_changed_input_reruns_the_stage_and_its_downstream(tmp_path):
    counter = Counter(tmp_path)
    two_stages(tmp_path, counter)
    two_stages(tmp_path, counter, a_input=2, a_content="A2")
    assert counter.calls == {"a": 2, "b": 2}


def test_downstream_reruns_when_upstream_output_changes(tmp_path):
    counter = Counter(tmp_path)
    two_stages(tmp_path, counter)
    (tmp_path / "a.txt").write_text("tampered")
    # 同样的输入，上游因产物被改而重做；这次生成出不同的字节 → 上游 fingerprint 变 → 下游重做
    _, a, _ = two_stages(tmp_path, counter, a_content="A, regenerated differently")
    assert counter.calls == {"a": 2, "b": 2}
    assert not a["skipped"]


@pytest.mark.parametrize("damage", ["corrupt", "remove"])
def test_corrupted_or_removed_output_reruns_only_that_stage(tmp_path, damage):
    counter = Counter(tmp_path)
    two_stages(tmp_path, counter)
    out = tmp_path / "a.txt"
    out.write_text("half-writ") if damage == "corrupt" else out.unlink()
    two_stages(tmp_path, counter)
    # a 重新生成出逐字节相同的产物，fingerprint 不变，b 照样跳过
    assert counter.calls == {"a": 2, "b": 1}
    assert out.read_text() == "A"


@pytest.mark.parametrize("record", ['{"inputs_digest": "tru', "", "[1, 2]", '{"inputs_digest": null}', "\xff"])
def test_truncated_or_garbled_record_counts_as_not_done(tmp_path, record):
    counter = Counter(tmp_path)
    two_stages(tmp_path, counter)
    (tmp_path / "stages" / "a.json").write_text(record, encoding="latin-1")
    two_stages(tmp_path, counter)
    assert counter.calls == {"a": 2, "b": 1}


def test_truncated_fingerprint_means_not_done(tmp_path):
    pipe = Pipeline(tmp_path)
    out = tmp_path / "a.txt"

    def write():
        out.write_text("hi")
        return [out], {}

    rec = pipe.stage("a", {"x": 1}, write)
    assert pipe.done("a", {"x": 1})["fingerprint"] == rec["fingerprint"]
    assert pipe.done("a", {"x": 2}) is None  # 输入变了
    out.write_text("changed")
    assert pipe.done("a", {"x": 1}) is None  # 产物被改过
    (tmp_path / "stages" / "a.json").write_text('{"inputs_digest": "tru', encoding="utf-8")
    out.write_text("hi")
    assert pipe.done("a", {"x": 1}) is None  # 指纹被截断


@pytest.mark.parametrize("error", [StageInterrupted("stop"), KeyboardInterrupt()])
def test_interrupted_stage_leaves_no_record_and_runs_next_time(tmp_path, error):
    counter = Counter(tmp_path)
    pipe = Pipeline(tmp_path)
    pipe.stage("a", {"x": 1}, counter.writer("a", "A"))

    def interrupted():
        atomic_write(tmp_path / "b.txt", "partial progress")
        raise error

    with pytest.raises(type(error)):
        pipe.stage("b", {"y": 1}, interrupted)
    assert not (tmp_path / "stages" / "b.json").exists()
    assert "b" not in pipe.records
    rec = Pipeline(tmp_path).stage("b", {"y": 1}, counter.writer("b", "B"))
    assert not rec["skipped"] and counter.calls == {"a": 1, "b": 1}


def test_fresh_reruns_everything(tmp_path):
    counter = Counter(tmp_path)
    two_stages(tmp_path, counter)
    two_stages(tmp_path, counter, fresh=True)
    assert counter.calls == {"a": 2, "b": 2}


def test_outputs_outside_run_dir_are_recorded_by_absolute_path(tmp_path):
    run_dir, elsewhere = tmp_path / "run", tmp_path / "elsewhere.txt"
    pipe = Pipeline(run_dir)
    rec = pipe.stage("a", {}, lambda: ([atomic_write(elsewhere, "x")], {}))
    assert list(rec["outputs"]) == [str(elsewhere.resolve())]
    assert pipe.done("a", {}) is not None
    elsewhere.unlink()
    assert pipe.done("a", {}) is None


def test_digest_ignores_key_order_and_sees_values():
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2}) != digest({"a": [2]})
