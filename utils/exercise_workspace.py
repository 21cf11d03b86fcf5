"""练习模式：把课程文件的核心函数挖空成练习，在 git 忽略的工作区里做，再用项目自己的参考测试判分。

三个命令（入口 `python -m utils.exercises`，见 utils/exercises.py 末尾）：

    new PATH      把 PATH（一个课程/模块文件，或一个目录下所有登记过的文件）复制到 workspace/<同样的相对路径>，
                  utils/exercise_catalog.py 里登记的函数体换成 `raise NotImplementedError("<提示>")`，
                  其余（import、docstring、辅助函数、main）原样保留；已有的工作区文件不覆盖（除非 --force）。
    check PATH    用项目的参考测试（目录里登记的测试 id）检验工作区里的副本，逐个函数打印 ✓/✗ 与第一处不一致。
    status        整个课程的进度：每个模块已实现（不再是 NotImplementedError 桩）/ 通过（上次 check 的结果）。

"把项目的文件换成学习者的"怎么做到、又不改任何测试文件：
- 按模块名 import 的文件（importlib.import_module("model_lab.01_components.rope")、from training_sys... import）：
  子进程的 sitecustomize 在 sys.meta_path 最前面装一个 finder，把这些模块名解析到工作区的文件；
  sitecustomize 随 PYTHONPATH 传给 pytest 派生的所有子进程（分布式测试的 spawn worker 也一样换掉）；
- 按路径加载的 archive 脚本（tests/conftest.py 的 load_script）：load_script 先调用 swapped_path(path)。
两者都只读环境变量 LLM_EXERCISE_SWAP（JSON：{仓库相对路径: 工作区文件}）；没设置时什么都不做。
判分结果由本模块作为 pytest 插件（-p utils.exercise_workspace）写进 LLM_EXERCISE_RESULTS 指向的 JSON。
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import difflib
import importlib.abc
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import unicodedata
from pathlib import Path

from utils.exercise_catalog import NOT_EXERCISES, Exercise, catalog
from utils.io import REPO_ROOT, atomic_write

WORKSPACE_ENV = "LLM_EXERCISE_WORKSPACE"  # 工作区根目录（默认 <仓库>/workspace）
SWAP_ENV = "LLM_EXERCISE_SWAP"  # check 子进程里：{仓库相对路径: 工作区文件}
RESULTS_ENV = "LLM_EXERCISE_RESULTS"  # check 子进程里：pytest 插件把每个测试的结果写到这里
STATE_FILE = ".exercise_state.json"  # 工作区里：每个模块上次 check 的结果（status 读它）
STUB_PREFIX = "练习 "


class ExerciseError(Exception):
    """学习者给错了路径、工作区缺文件之类：CLI 打印信息并以退出码 2 结束，不打印 traceback。"""


def workspace_root() -> Path:
    return Path(os.environ.get(WORKSPACE_ENV, REPO_ROOT / "workspace")).resolve()


# =============================================================================
# 1. 挖空：按 AST 找到函数，函数体（docstring 之后）换成 raise NotImplementedError
# =============================================================================
def find_function(tree: ast.Module, qualname: str) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """按 "func" 或 "Class.method"（可多层）在模块顶层往下找 def；找不到返回 None。"""
    scope: list[ast.stmt] = tree.body
    *outer, last = qualname.split(".")
    for name in outer:
        cls = next((n for n in scope if isinstance(n, ast.ClassDef) and n.name == name), None)
        if cls is None:
            return None
        scope = cls.body
    return next((n for n in scope if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == last), None)


def _docstring_node(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.Expr | None:
    first = fn.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first
    return None


def is_stub(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """函数体（docstring 之外）只剩一句 raise NotImplementedError(...)：还没做。"""
    body = fn.body[1:] if _docstring_node(fn) else fn.body
    if len(body) != 1 or not isinstance(body[0], ast.Raise) or body[0].exc is None:
        return False
    exc = body[0].exc
    target = exc.func if isinstance(exc, ast.Call) else exc
    return isinstance(target, ast.Name) and target.id == "NotImplementedError"


def stub_lines(exercise: Exercise, indent: str) -> list[str]:
    """提示的每一行一个字符串字面量（拼成一条多行信息）：在编辑器里读得清楚，traceback 里也完整。"""
    lines = [f"{STUB_PREFIX}{exercise.name}：", *exercise.hint.strip().splitlines()]
    out = [f"{indent}raise NotImplementedError("]
    for i, line in enumerate(lines):
        text = line.strip() + ("\n" if i < len(lines) - 1 else "")
        out.append(f"{indent}    {json.dumps(text, ensure_ascii=False)}")
    out.append(f"{indent})")
    return out


def make_exercise_source(source: str, exercises: tuple[Exercise, ...], filename: str = "<课程文件>") -> str:
    """返回挖空后的源码：登记的函数体换成带提示的 NotImplementedError，其它一个字符都不动。"""
    tree = ast.parse(source, filename=filename)
    lines = source.splitlines(keepends=True)
    spans = []
    for ex in exercises:
        fn = find_function(tree, ex.name)
        if fn is None:
            raise ExerciseError(f"{filename} 里找不到练习函数 {ex.name}（utils/exercise_catalog.py 过期了？）")
        doc = _docstring_node(fn)
        body = fn.body[1:] if doc else fn.body
        if not body:
            raise ExerciseError(f"{filename}:{fn.lineno} {ex.name} 只有 docstring，没有可挖空的函数体")
        start = body[0].lineno - 1  # 0 起的行号
        if doc is not None and doc.end_lineno - 1 >= start or start <= fn.lineno - 1:
            raise ExerciseError(f"{filename}:{fn.lineno} {ex.name} 的函数体与 def/docstring 写在同一行，无法挖空")
        # 函数体之前紧挨着的注释也属于解答（"# 先减最大值……"），一起挖掉；空行保留
        header_end = doc.end_lineno - 1 if doc else fn.lineno - 1
        while start - 1 > header_end and lines[start - 1].strip().startswith("#"):
            start -= 1
        indent = " " * body[0].col_offset
        spans.append((start, fn.end_lineno, stub_lines(ex, indent)))
    for start, end, stub in sorted(spans, reverse=True):  # 从后往前换，前面的行号不变
        lines[start:end] = [line + "\n" for line in stub]
    return "".join(lines)


def stub_status(path: Path, exercises: tuple[Exercise, ...]) -> dict[str, bool]:
    """{函数名: 已实现?}；文件解析不了（学习者写到一半的语法错误）时全部算未实现。"""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except SyntaxError:
        return {ex.name: False for ex in exercises}
    out = {}
    for ex in exercises:
        fn = find_function(tree, ex.name)
        out[ex.name] = fn is not None and not is_stub(fn)
    return out


# =============================================================================
# 2. 路径：学习者给的 PATH → 目录里登记的文件
# =============================================================================
def _relative(path_arg: str, root: Path) -> str:
    """把绝对路径、./ 前缀、工作区路径统一成仓库相对路径（正斜杠，不带结尾的 /）。"""
    p = Path(path_arg).expanduser()
    if p.is_absolute():
        p = p.resolve()
        for base in (root, REPO_ROOT):
            if p == base or base in p.parents:
                return p.relative_to(base).as_posix() if p != base else ""
        return p.as_posix()
    rel = p.as_posix().strip("/")
    while rel.startswith("./"):
        rel = rel[2:]
    ws = root.relative_to(REPO_ROOT).as_posix() if REPO_ROOT in root.parents else None
    if ws and (rel == ws or rel.startswith(ws + "/")):
        rel = rel[len(ws):].strip("/")
    return "" if rel == "." else rel


def resolve_targets(path_arg: str, root: Path | None = None) -> list[str]:
    """PATH 对应的登记文件（目录 → 其下所有登记文件）；没有时抛 ExerciseError 并列出相近的路径。"""
    root = root or workspace_root()
    files = catalog()
    rel = _relative(path_arg, root)
    if rel in files:
        return [rel]
    under = sorted(f for f in files if rel == "" or f.startswith(rel + "/"))
    if under:
        return under
    folders = sorted({str(Path(f).parent.as_posix()) for f in files} | {f.split("/")[0] for f in files})
    candidates = list(files) + folders
    close = difflib.get_close_matches(rel, candidates, n=5, cutoff=0.5)
    name = Path(rel).name
    close += [f for f in files if name and name in Path(f).name and f not in close][:5]
    hint = "；相近的：\n  " + "\n  ".join(close) if close else "；python -m utils.exercises status 列出全部模块"
    if rel in NOT_EXERCISES:
        raise ExerciseError(f"{rel} 不是课、没有练习：{NOT_EXERCISES[rel]}{hint}")
    if (REPO_ROOT / rel).is_file():
        raise ExerciseError(f"{rel} 还没有登记练习函数（utils/exercise_catalog.py 或 utils/exercise_parts/）{hint}")
    raise ExerciseError(f"没有登记过练习的路径：{path_arg}{hint}")


# =============================================================================
# 3. 交换：check 子进程里把项目的文件换成工作区的文件
# =============================================================================
def swap_map() -> dict[str, Path]:
    raw = os.environ.get(SWAP_ENV)
    return {rel: Path(p) for rel, p in json.loads(raw).items()} if raw else {}


def module_name(rel: str) -> str | None:
    """仓库相对路径 → 模块名（model_lab/01_components/rope.py → model_lab.01_components.rope）；archive 等
    按路径加载的脚本（目录名带空格、撇号）没有模块名。"""
    parts = rel[:-3].split("/") if rel.endswith(".py") else []
    return ".".join(parts) if parts and all(p.isidentifier() or p[:1].isdigit() for p in parts) else None


def swapped_path(path: str | os.PathLike) -> Path:
    """tests/conftest.py 的 load_script 用：练习模式下返回工作区里的副本，否则原样返回。"""
    path = Path(path)
    mapping = swap_map()
    if mapping:
        try:
            rel = path.resolve().relative_to(REPO_ROOT).as_posix()
        except ValueError:
            return path
        return mapping.get(rel, path)
    return path


class _SwapFinder(importlib.abc.MetaPathFinder):
    """import 登记过的模块名时，返回指向工作区文件的 spec（包、父模块照旧从仓库导入）。"""

    def __init__(self, modules: dict[str, Path]):
        self.modules = modules

    def find_spec(self, fullname, path=None, target=None):
        file = self.modules.get(fullname)
        return importlib.util.spec_from_file_location(fullname, file) if file else None


def install_swap() -> None:
    """sitecustomize 调用：按 LLM_EXERCISE_SWAP 在 sys.meta_path 最前面装 finder（重复调用无害）。"""
    modules = {name: file for rel, file in swap_map().items() if (name := module_name(rel))}
    if modules and not any(isinstance(f, _SwapFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _SwapFinder(modules))


# =============================================================================
# 4. pytest 插件（-p utils.exercise_workspace）：逐个测试记下结果与第一条失败信息
# =============================================================================
_RESULTS: list[dict] = []


_STUB_LINE = re.compile(r"NotImplementedError: " + re.escape(STUB_PREFIX) + r"([^：\n]+)：")


def _failure_message(report) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    message = crash.message if crash is not None else str(report.longrepr).strip()[-2000:]
    if "InterpreterError" in message:  # Triton 解释器把 kernel 里的异常包成 repr：提示的换行变成了字面的 \n
        message = message.replace("\\n", "\n")
    if message.startswith(("ExceptionGroup", "BaseExceptionGroup")):
        # hypothesis 找到几种不同的失败时只报 "ExceptionGroup: Hypothesis found N distinct failures"：
        # 从完整报告里把各个子异常撞上的练习桩找出来，_blocked_by 才知道是谁挡住了这道题
        stubs = dict.fromkeys(_STUB_LINE.findall(str(report.longrepr)))
        message += "".join(f"\n  其中：NotImplementedError: {STUB_PREFIX}{name}：" for name in stubs)
    return message


def pytest_runtest_logreport(report) -> None:
    if not os.environ.get(RESULTS_ENV):
        return
    if report.when == "call" or report.outcome != "passed":  # setup/teardown 只在出错或跳过时记
        _RESULTS.append({"nodeid": report.nodeid, "outcome": report.outcome,
                         "message": "" if report.passed else _failure_message(report)})


def pytest_collectreport(report) -> None:
    if os.environ.get(RESULTS_ENV) and report.failed:  # 测试文件导入失败（学习者的文件有语法错误等）
        _RESULTS.append({"nodeid": report.nodeid, "outcome": "error", "message": _failure_message(report)})


def pytest_sessionfinish(session, exitstatus) -> None:
    if out := os.environ.get(RESULTS_ENV):
        atomic_write(out, json.dumps(_RESULTS, ensure_ascii=False))


# =============================================================================
# 5. 判分：每个函数的测试 → ✓/✗ 与第一处不一致
# =============================================================================
def _matches(selector: str, result: dict) -> bool:
    nodeid = result["nodeid"]
    if nodeid == selector or nodeid.startswith((selector + "[", selector + "::")):
        return True
    return result["outcome"] == "error" and selector.startswith(nodeid + "::")  # 整个测试文件没能收集


def _selfcheck_line(message: str, name: str) -> str | None:
    """28 天的自检输出（exercises.run_checks 的 "✓ 名字" / "✗ 名字: 原因" 与缩进 6 格的续行）里这一题的结论。"""
    lines = message.splitlines()
    for i, line in enumerate(lines):
        words = line.replace("AssertionError:", "").split()
        if words[:2] == ["✓", name]:
            return "✓"
        if words[:2] == ["✗", f"{name}:"]:
            found = [line[line.index("✗") + 2:]]
            for more in lines[i + 1:]:
                if not more.startswith("      "):
                    break
                found.append(more.strip())
            return "\n".join(found)
    return None


def _blocked_by(message: str, name: str) -> str | None:
    """失败信息是另一道练习的 NotImplementedError 桩（"练习 X："）时返回 X：它挡住了这道题。

    信息里有几个桩（hypothesis 的 ExceptionGroup）而其中有这道题自己的：算它自己的失败。"""
    start = message.find(STUB_PREFIX)
    if start < 0:
        return None
    names = [message[start + len(STUB_PREFIX):].split("：", 1)[0], *_STUB_LINE.findall(message)]
    return None if name in names else names[0]


def attribute(exercise: Exercise, results: list[dict], selfcheck: bool) -> tuple[bool, str]:
    """(通过?, 说明)：一个函数的全部测试通过才算 ✓；说明是第一个失败测试的 id 与断言信息。"""
    mine = [r for sel in exercise.tests for r in results if _matches(sel, r)]
    if not mine:
        return False, "它的测试一个也没有运行（测试 id 过期？运行 pytest tests/utils/test_exercise_workspace.py）"
    failed = [r for r in mine if r["outcome"] in ("failed", "error")]
    # 先报这道题自己的错；只被别的练习的桩挡住的失败排在后面（rotate_half 的测试要先用到 default_inv_freq）
    failed.sort(key=lambda r: _blocked_by(r["message"], exercise.name) is not None)
    for r in failed:
        if selfcheck:  # 一天的自检是一个测试：按自检输出里这一题的那一行判
            verdict = _selfcheck_line(r["message"], exercise.name)
            if verdict == "✓":
                continue
            if verdict is not None:
                return False, f"{r['nodeid']}\n{verdict}"
        other = _blocked_by(r["message"], exercise.name)
        prefix = f"（先要实现它用到的练习 {other}）\n" if other else ""
        return False, f"{prefix}{r['nodeid']}\n{r['message']}"
    if all(r["outcome"] == "skipped" for r in mine):
        return False, f"测试全部被跳过：{mine[0]['message'][:200]}"
    return True, ""


def _shorten(text: str, max_lines: int = 6) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    shown = lines[:max_lines] + (["…"] if len(lines) > max_lines else [])
    return "\n      ".join(line[:300] for line in shown)


def _site_dir(tmp: Path) -> Path:
    site = tmp / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "from utils.exercise_workspace import install_swap\n\ninstall_swap()\n", encoding="utf-8")
    return site


def run_reference_tests(targets: list[str], root: Path, verbose: bool = False) -> tuple[list[dict], int, str]:
    """在子进程里跑这些文件登记的测试（工作区副本换进去），返回 (逐测试结果, pytest 退出码, 输出)。"""
    files = catalog()
    tests = sorted({t for rel in targets for ex in files[rel] for t in ex.tests})
    with tempfile.TemporaryDirectory(prefix="exercise-check-") as tmp:
        tmp = Path(tmp)
        results_file = tmp / "results.json"
        env = dict(os.environ)
        env[SWAP_ENV] = json.dumps({rel: str(root / rel) for rel in targets}, ensure_ascii=False)
        env[RESULTS_ENV] = str(results_file)
        env["PYTHONPATH"] = os.pathsep.join([str(_site_dir(tmp)), str(REPO_ROOT), env.get("PYTHONPATH", "")])
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # 学习者一秒内改两次、文件大小不变时，旧 .pyc 会被当成有效
        env.pop(WORKSPACE_ENV, None)
        cmd = [sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", "-p",
               "utils.exercise_workspace", "-q", "--tb=short", *tests]
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=not verbose, text=True)
        output = "" if verbose else proc.stdout + proc.stderr
        results = json.loads(results_file.read_text(encoding="utf-8")) if results_file.exists() else []
    return results, proc.returncode, output


# =============================================================================
# 6. 命令
# =============================================================================
def cmd_new(path_arg: str, force: bool = False, root: Path | None = None) -> int:
    root = root or workspace_root()
    files = catalog()
    skipped = []
    for rel in resolve_targets(path_arg, root):
        dest = root / rel
        if dest.exists() and not force:
            skipped.append(rel)
            continue
        source = (REPO_ROOT / rel).read_text(encoding="utf-8")
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(dest, make_exercise_source(source, files[rel], rel))
        names = ", ".join(ex.name for ex in files[rel])
        print(f"已生成 {_show(dest)}：{len(files[rel])} 个练习（{names}）")
    for rel in skipped:
        print(f"已存在，未覆盖：{_show(root / rel)}（重新生成会丢掉你的实现；确定要的话加 --force）")
    if len(skipped) < len(resolve_targets(path_arg, root)):
        print(f"下一步：实现这些函数，然后 python -m utils.exercises check {path_arg}")
    return 1 if skipped else 0


def _show(path: Path) -> str:
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(path)


def _load_state(root: Path) -> dict:
    path = root / STATE_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def cmd_check(path_arg: str, root: Path | None = None, verbose: bool = False) -> int:
    root = root or workspace_root()
    targets = resolve_targets(path_arg, root)
    missing = [rel for rel in targets if not (root / rel).exists()]
    if missing and len(missing) == len(targets):
        raise ExerciseError(f"工作区里还没有 {missing[0]}{' 等' if len(missing) > 1 else ''}：先运行 "
                            f"python -m utils.exercises new {path_arg}")
    targets = [rel for rel in targets if rel not in missing]
    files = catalog()
    results, code, output = run_reference_tests(targets, root, verbose)
    if code not in (0, 1):  # 2 中断、3 内部错误、4 用法错误（测试 id 不存在）、5 没收集到测试
        print(output.strip()[-3000:])
        raise ExerciseError(f"pytest 没能正常运行（退出码 {code}）：看上面的输出")
    state = _load_state(root)
    now = dt.datetime.now().isoformat(timespec="seconds")
    n_pass = n_total = 0
    for rel in targets:
        selfcheck = "CHECKS" in (REPO_ROOT / rel).read_text(encoding="utf-8")
        print(f"{rel}")
        verdicts = {}
        for ex in files[rel]:
            ok, why = attribute(ex, results, selfcheck)
            verdicts[ex.name] = ok
            print(f"  ✓ {ex.name}" if ok else f"  ✗ {ex.name}\n      {_shorten(why)}")
        passed = sum(verdicts.values())
        n_pass, n_total = n_pass + passed, n_total + len(verdicts)
        state[rel] = {"checked_at": now, "passed": verdicts}
    atomic_write(root / STATE_FILE, json.dumps(state, ensure_ascii=False, indent=1, sort_keys=True))
    print(f"{n_pass}/{n_total} passed")
    if missing:
        print(f"（{len(missing)} 个登记的模块还没用 new 生成，这次没检查）")
    return 0 if n_pass == n_total else 1


def _pad(text: str, width: int, right: bool = False) -> str:
    """按显示宽度补空格：中文字符占两列（str.ljust 按字符数算，表头会错位）。"""
    cols = sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)
    fill = " " * max(width - cols, 0)
    return fill + text if right else text + fill


def cmd_status(root: Path | None = None) -> int:
    root = root or workspace_root()
    files = catalog()
    state = _load_state(root)
    width = max(len(rel) for rel in files)
    print(f"练习进度（工作区 {_show(root)}）")
    print(f"{_pad('模块', width)}  {_pad('已实现', 7, right=True)}  {_pad('通过', 7, right=True)}  上次检查")
    started = done = total = implemented = passing = 0
    for rel, exercises in files.items():
        n = len(exercises)
        total += n
        path = root / rel
        if not path.exists():
            print(f"{_pad(rel, width)}  {'—':>7}  {'—':>7}  未开始")
            continue
        started += 1
        impl = sum(stub_status(path, exercises).values())
        entry = state.get(rel)
        ok = sum(entry["passed"].get(ex.name, False) for ex in exercises) if entry else 0
        implemented, passing = implemented + impl, passing + ok
        done += ok == n
        when = entry["checked_at"].replace("T", " ") if entry else "还没 check"
        print(f"{_pad(rel, width)}  {f'{impl}/{n}':>7}  {f'{ok}/{n}':>7}  {when}")
    print(f"合计：开始 {started}/{len(files)} 个模块，完成 {done}；函数已实现 {implemented}/{total}，通过 {passing}/{total}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m utils.exercises",
        description="练习模式：new 生成挖空的副本 → 实现 → check 用项目的参考测试判分；status 看整体进度。")
    parser.add_argument("--workspace", type=Path, help=f"工作区目录（默认 workspace/，或环境变量 {WORKSPACE_ENV}）")
    sub = parser.add_subparsers(dest="command", required=True)
    new = sub.add_parser("new", help="生成练习副本（核心函数换成 NotImplementedError + 提示）")
    new.add_argument("path", help="课程/模块文件或目录，例如 model_lab/01_components/rope.py")
    new.add_argument("--force", action="store_true", help="覆盖工作区里已有的文件（你的实现会丢失）")
    check = sub.add_parser("check", help="用项目的参考测试检验工作区副本，逐函数 ✓/✗")
    check.add_argument("path")
    check.add_argument("--verbose", action="store_true", help="同时显示 pytest 的完整输出")
    sub.add_parser("status", help="整个课程的练习进度")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = args.workspace.resolve() if args.workspace else workspace_root()
    try:
        if args.command == "new":
            return cmd_new(args.path, args.force, root)
        if args.command == "check":
            return cmd_check(args.path, root, args.verbose)
        return cmd_status(root)
    except ExerciseError as err:
        print(f"错误：{err}", file=sys.stderr)
        return 2

