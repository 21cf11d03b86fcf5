"""练习模式（utils/exercise_workspace.py，入口 python -m utils.exercises）：

- 往返：生成的工作区 check 失败（每个练习 ✗、退出码非 0），把参考解答原样拷回去再 check 全部 ✓、退出码 0——
  覆盖一个 model_lab 组件（按模块名 import）、一天 28 天挑战（按路径 load_script）、一个优化器；
- 目录不过期：每个登记的函数都在它的文件里、都能挖空；每个测试 id 都收集得到；
- new 不覆盖已有文件（--force 才覆盖）；路径写错时列出相近的路径；status 的格式；
- 挖空只动登记的函数体：其余源码一个字符不变。
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, load_script
from utils import exercise_workspace as ws
from utils.exercise_catalog import Exercise, catalog

ROPE = "model_lab/01_components/rope.py"
DAY04 = "archive/28days_challenges/day04_broadcasting.py"
ADAMW = "training_sys/optimization/adamw.py"


def cli(*args: str, workspace) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "utils.exercises", "--workspace", str(workspace), *args],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


def verdict_lines(out: str, mark: str) -> list[str]:
    return [line.strip()[2:] for line in out.splitlines() if line.startswith(f"  {mark} ")]


# -----------------------------------------------------------------------------
# 往返：失败 → 填入参考解答 → 通过
# -----------------------------------------------------------------------------
def test_round_trip_generated_workspace_fails_and_reference_bodies_pass(tmp_path):
    targets = (ROPE, DAY04, ADAMW)
    for rel in targets:
        assert ws.main(["--workspace", str(tmp_path), "new", rel]) == 0
    expected = [ex.name for rel in targets for ex in catalog()[rel]]

    failed = cli("check", str(tmp_path), workspace=tmp_path)  # 工作区根目录：检查已生成的全部三个文件
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert sorted(verdict_lines(failed.stdout, "✗")) == sorted(expected), failed.stdout
    assert verdict_lines(failed.stdout, "✓") == []
    assert f"0/{len(expected)} passed" in failed.stdout
    # 第一处不一致：提示本身（NotImplementedError 带着"练习 名字：形状/公式/陷阱"）
    assert "NotImplementedError: 练习 apply_rope：" in failed.stdout and "NotImplementedError: 练习 adamw_update_：" in failed.stdout
    assert "ex3_outer: NotImplementedError: 练习 ex3_outer" in failed.stdout
    assert "（先要实现它用到的练习 default_inv_freq）" in failed.stdout  # rotate_half 的测试先撞上别的练习

    for rel in targets:  # 学习者"做完了"：写出与参考解答相同的函数体
        shutil.copyfile(REPO_ROOT / rel, tmp_path / rel)
    passed = cli("check", str(tmp_path), workspace=tmp_path)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert sorted(verdict_lines(passed.stdout, "✓")) == sorted(expected)
    assert f"{len(expected)}/{len(expected)} passed" in passed.stdout

    state = json.loads((tmp_path / ws.STATE_FILE).read_text(encoding="utf-8"))
    assert all(all(state[rel]["passed"].values()) for rel in targets)


def test_a_wrong_body_is_caught_with_its_mismatch(tmp_path):
    """不是 NotImplementedError 而是算错了（忘了把裁剪系数夹到 ≤ 1）：✗，并给出参考测试的断言信息。"""
    rel = "training_sys/optimization/clipping.py"
    source = (REPO_ROOT / rel).read_text(encoding="utf-8")
    wrong = source.replace("clip_coef = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)",
                           "clip_coef = max_norm / (total_norm + 1e-6)")
    assert wrong != source
    (tmp_path / rel).parent.mkdir(parents=True)
    (tmp_path / rel).write_text(wrong, encoding="utf-8")
    result = cli("check", rel, workspace=tmp_path)
    assert result.returncode == 1
    assert verdict_lines(result.stdout, "✗") == ["clip_grad_norm"], result.stdout
    assert "tests/training_sys/optimization/test_clipping.py::test_matches_torch" in result.stdout
    assert "Tensor-likes are not close" in result.stdout


# -----------------------------------------------------------------------------
# 目录不过期
# -----------------------------------------------------------------------------
def test_every_catalogued_function_exists_and_becomes_a_stub_that_keeps_the_rest(tmp_path):
    files = catalog()
    assert len(files) >= 60 and sum(map(len, files.values())) >= 250
    for rel, exercises in files.items():
        source = (REPO_ROOT / rel).read_text(encoding="utf-8")
        assert all(ws.stub_status(REPO_ROOT / rel, exercises).values()), f"{rel}：参考解答不应该被判为桩"
        assert len({ex.name for ex in exercises}) == len(exercises), f"{rel} 有重复登记的函数"
        assert all(ex.hint.count("\n") >= 2 and ex.tests for ex in exercises), rel
        out = ws.make_exercise_source(source, exercises, rel)
        (tmp_path / "x.py").write_text(out, encoding="utf-8")
        assert not any(ws.stub_status(tmp_path / "x.py", exercises).values()), rel
        compile(out, rel, "exec")


def test_stub_changes_only_the_marked_bodies():
    source = (REPO_ROOT / ROPE).read_text(encoding="utf-8")
    out = ws.make_exercise_source(source, catalog()[ROPE], ROPE)
    before, after = ast.parse(source), ast.parse(out)
    marked = {ex.name for ex in catalog()[ROPE]}
    for a, b in zip(before.body, after.body, strict=True):
        name = getattr(a, "name", None)
        if name in marked:
            assert ast.get_docstring(a) == ast.get_docstring(b)  # docstring 留给学习者读
            assert ast.unparse(a.args) == ast.unparse(b.args)  # 签名不变
        else:
            assert ast.get_source_segment(source, a) == ast.get_source_segment(out, b), name
    hint = next(ex.hint for ex in catalog()[ROPE] if ex.name == "rotate_half")
    assert all(line in out for line in hint.splitlines())


@pytest.mark.slow  # 收集要导入约 40 个测试文件（transformers、分布式、Triton）：2 核上约 20 s
def test_every_catalogued_test_id_collects():
    ids = sorted({t for exercises in catalog().values() for ex in exercises for t in ex.tests})
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider",
                           "--collect-only", "-q", *ids], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    collected = [line.strip() for line in proc.stdout.splitlines() if "::" in line]
    orphans = [t for t in ids if not any(ws._matches(t, {"nodeid": n, "outcome": "passed"}) for n in collected)]
    assert not orphans, f"这些测试 id 收集不到：{orphans}"


# -----------------------------------------------------------------------------
# new / 路径 / status
# -----------------------------------------------------------------------------
def test_new_refuses_to_overwrite_unless_forced(tmp_path, capsys):
    assert ws.main(["--workspace", str(tmp_path), "new", ADAMW]) == 0
    mine = tmp_path / ADAMW
    mine.write_text("# 我的实现\n", encoding="utf-8")
    assert ws.main(["--workspace", str(tmp_path), "new", ADAMW]) == 1
    assert "已存在，未覆盖" in capsys.readouterr().out and mine.read_text(encoding="utf-8") == "# 我的实现\n"
    assert ws.main(["--workspace", str(tmp_path), "new", "--force", ADAMW]) == 0
    assert "raise NotImplementedError(" in mine.read_text(encoding="utf-8")


def test_new_accepts_a_folder_and_workspace_paths(tmp_path):
    assert ws.main(["--workspace", str(tmp_path), "new", "training_sys/optimization/"]) == 0
    expected = {rel for rel in catalog() if rel.startswith("training_sys/optimization/")}
    assert {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.py")} == expected
    # 工作区里的路径（补全出来的 workspace/...）与仓库路径指同一个模块
    assert ws.resolve_targets(str(tmp_path / ADAMW), tmp_path) == [ADAMW]
    assert ws.resolve_targets(f"./{ADAMW}", tmp_path) == [ADAMW]


@pytest.mark.parametrize(("path", "close"), [
    ("model_lab/01_components/rop.py", ROPE),
    ("archive/28days_challenges/day04_broadcast.py", DAY04),
    ("training_sys/optimisation/adamw.py", ADAMW),
])
def test_unknown_path_is_a_clear_error_listing_close_matches(tmp_path, capsys, path, close):
    assert ws.main(["--workspace", str(tmp_path), "new", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith("错误：没有登记过练习的路径") and close in err
    assert not any(tmp_path.iterdir())


def test_unregistered_file_and_missing_workspace_are_explained(tmp_path, capsys):
    assert ws.main(["--workspace", str(tmp_path), "new", "model_lab/attention_backends.py"]) == 2
    assert "不是课、没有练习：注意力后端的注册表" in capsys.readouterr().err
    stray = REPO_ROOT / "utils" / "exercise_parts" / "__init__.py"  # 真实存在、既没登记也不在 NOT_EXERCISES 的文件
    assert ws.main(["--workspace", str(tmp_path), "new", str(stray.relative_to(REPO_ROOT))]) == 2
    assert "还没有登记练习函数" in capsys.readouterr().err
    assert ws.main(["--workspace", str(tmp_path), "check", ROPE]) == 2
    assert f"先运行 python -m utils.exercises new {ROPE}" in capsys.readouterr().err


def test_status_shows_every_module_with_implemented_and_passing_counts(tmp_path, capsys):
    ws.main(["--workspace", str(tmp_path), "new", ROPE])
    ws.main(["--workspace", str(tmp_path), "new", ADAMW])
    capsys.readouterr()
    # 学习者实现了 rotate_half（写回参考函数体），上一次 check 判它通过
    mine = tmp_path / ROPE
    text = mine.read_text(encoding="utf-8")
    fn = ws.find_function(ast.parse(text), "rotate_half")
    lines = text.splitlines(keepends=True)
    lines[fn.body[1].lineno - 1:fn.end_lineno] = ["    x1, x2 = x.chunk(2, dim=-1)\n",
                                                  "    return torch.cat((-x2, x1), dim=-1)\n"]
    mine.write_text("".join(lines), encoding="utf-8")
    state = {ROPE: {"checked_at": "2025-01-02T03:04:05", "passed": {"rotate_half": True, "apply_rope": False}}}
    (tmp_path / ws.STATE_FILE).write_text(json.dumps(state), encoding="utf-8")

    assert ws.main(["--workspace", str(tmp_path), "status"]) == 0
    out = capsys.readouterr().out.splitlines()
    files = catalog()
    columns = [re.split(r"\s{2,}", line.strip()) for line in out[1:-1]]  # 列之间至少两个空格（路径里可以有空格）
    assert out[0].startswith("练习进度") and columns[0] == ["模块", "已实现", "通过", "上次检查"]
    rows = {row[0]: row[1:] for row in columns[1:]}
    assert list(rows) == list(files)  # 整个课程，按目录顺序
    assert rows[ROPE] == ["1/4", "1/4", "2025-01-02 03:04:05"]
    assert rows[ADAMW] == ["0/1", "0/1", "还没 check"]
    assert rows[DAY04] == ["—", "—", "未开始"]
    total = sum(map(len, files.values()))
    assert out[-1] == f"合计：开始 2/{len(files)} 个模块，完成 0；函数已实现 1/{total}，通过 1/{total}"


# -----------------------------------------------------------------------------
# 交换与判分的零件
# -----------------------------------------------------------------------------
def test_swap_maps_module_names_and_script_paths(tmp_path, monkeypatch):
    assert ws.module_name(ROPE) == "model_lab.01_components.rope"
    assert ws.module_name("archive/Let's_build_GPT/let's_build_gpt.py") is None  # 按路径加载
    assert ws.swapped_path(REPO_ROOT / DAY04) == REPO_ROOT / DAY04  # 不在练习模式：原样
    monkeypatch.setenv(ws.SWAP_ENV, json.dumps({DAY04: str(tmp_path / DAY04)}))
    assert ws.swapped_path(REPO_ROOT / DAY04) == tmp_path / DAY04
    assert ws.swapped_path(REPO_ROOT / ROPE) == REPO_ROOT / ROPE


def test_attribution_reads_selfcheck_lines_and_prefers_own_failures():
    ex = Exercise("ex2_b", "x\ny\nz", ("t.py::test_day[d]",))
    message = "AssertionError:   ✓ ex1_a\n  ✗ ex2_b: AssertionError: 不对\n      第二行\n  ✓ ex3_c\n7/8 passed"
    results = [{"nodeid": "t.py::test_day[d]", "outcome": "failed", "message": message}]
    assert ws.attribute(ex, results, selfcheck=True) == (False, "t.py::test_day[d]\nex2_b: AssertionError: 不对\n第二行")
    assert ws.attribute(Exercise("ex1_a", "", ex.tests), results, selfcheck=True) == (True, "")
    assert ws.attribute(Exercise("zz", "", ("t.py::other",)), results, selfcheck=False)[0] is False  # 没运行 ≠ 通过

    blocked = {"nodeid": "t.py::test_f[1]", "outcome": "failed", "message": "NotImplementedError: 练习 g：\n…"}
    own = {"nodeid": "t.py::test_f[2]", "outcome": "failed", "message": "AssertionError: 差 1e-3"}
    ok, why = ws.attribute(Exercise("f", "", ("t.py::test_f",)), [blocked, own], selfcheck=False)
    assert not ok and why.endswith("差 1e-3")


def test_hypothesis_exception_group_names_the_stubs_inside_it():
    """hypothesis 报 "ExceptionGroup: … distinct failures" 时，从完整报告里找出撞上的桩：别人的桩 = 被挡住，有自己的 = 自己没写。"""

    class Crash:
        message = "ExceptionGroup: Hypothesis found 2 distinct failures. (2 sub-exceptions)"

    class LongRepr:
        reprcrash = Crash()

        def __str__(self):
            return ("  +-- 1 ----\n  | NotImplementedError: 练习 Tensor.__mul__：\n  | 形状：…\n"
                    "  +-- 2 ----\n  | NotImplementedError: 练习 Tensor.backward：\n  | 公式：…\n"
                    "  +-- 3 ----\n  | NotImplementedError: 练习 Tensor.__mul__：\n")

    class Report:
        longrepr = LongRepr()

    message = ws._failure_message(Report())
    assert message.startswith(Crash.message)
    assert message.count("练习 Tensor.__mul__：") == 1 and "练习 Tensor.backward：" in message
    assert ws._blocked_by(message, "Tensor.sum") == "Tensor.__mul__"  # 被别的练习挡住
    assert ws._blocked_by(message, "Tensor.backward") is None  # 其中有它自己的桩：算它自己的失败
    assert ws._blocked_by("AssertionError: 差 1e-3", "f") is None


def test_28days_selfcheck_shows_the_stub_hint_instead_of_a_whitelist_violation(monkeypatch, capsys):
    """谜题挖空后调用了 NotImplementedError：自检报告提示本身，而不是"调用了白名单之外的函数"。"""
    rel = DAY04
    source = ws.make_exercise_source((REPO_ROOT / rel).read_text(encoding="utf-8"), catalog()[rel], rel)
    namespace: dict = {}
    exec(compile(source, rel, "exec"), namespace)  # 刚生成的练习副本
    day = load_script(REPO_ROOT / rel)
    monkeypatch.setattr(day, "ex1_ones", namespace["ex1_ones"])
    assert day.run_checks(verbose=True, seeds=(0,))[0] == len(day.CHECKS) - 1
    out = capsys.readouterr().out
    assert "✗ ex1_ones: NotImplementedError: 练习 ex1_ones" in out and "谜题只允许调用" not in out


# -----------------------------------------------------------------------------
# 28 天：挖空之后直接运行那一天，演示不能先崩——学习者要看到的是自检里逐题的 ✗ 与提示
# -----------------------------------------------------------------------------
DAYS = sorted(p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "archive" / "28days_challenges").glob("day*.py"))


@pytest.mark.parametrize("rel", DAYS, ids=[d.split("/")[-1][:5] for d in DAYS])
def test_28days_demo_runs_with_every_exercise_unwritten(rel, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SMOKE", "1")
    path = tmp_path / rel.split("/")[-1]
    path.write_text(ws.make_exercise_source((REPO_ROOT / rel).read_text(encoding="utf-8"), catalog()[rel], rel),
                    encoding="utf-8")
    module = load_script(path, name=f"stubbed_{path.stem}")
    module.demo()  # 不许抛出：演示里用到练习函数的地方要先判断它写了没有
    passed, total = module.run_checks(verbose=False, seeds=[0])
    assert total == len(catalog()[rel]) and passed == 0


# -----------------------------------------------------------------------------
# 覆盖面：每个课程 / 模块文件要么登记了练习，要么在 NOT_EXERCISES 里写明为什么不是课
# -----------------------------------------------------------------------------
def test_every_lesson_and_module_has_exercises_or_a_reason():
    from utils.exercise_catalog import NOT_EXERCISES

    tracked = subprocess.run(["git", "ls-files", "-z", "*.py"], cwd=REPO_ROOT, capture_output=True, text=True,
                             check=True).stdout.split("\0")  # -z：路径里有空格（Introductory learning）
    stages = ("archive/", "model_lab/", "data_pipeline/", "training_sys/", "inference_engine/", "utils/")
    lessons = {p for p in tracked if p.startswith(stages) and not p.endswith("__init__.py")
               and not p.startswith("utils/exercise_parts/")}
    listed = catalog().keys() | NOT_EXERCISES.keys()
    assert sorted(lessons - listed) == [], "这些文件既没有练习也没说明为什么：在 utils/exercise_parts/ 登记核心函数，或写进 NOT_EXERCISES"
    assert sorted(listed - lessons) == [], "练习目录里有已经不存在的文件"
    assert not catalog().keys() & NOT_EXERCISES.keys()
    assert all(catalog()[rel] for rel in catalog()), "登记了文件却没有一个练习函数"
