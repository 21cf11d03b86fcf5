"""变异测试的运行器：把仓库复制到临时目录，逐个施加 mutants.py 里的变异体，跑覆盖它的测试，汇总成表。

每个变异体的结果：
- killed    —— 覆盖它的测试失败了（或超时：死循环也算被抓到）；
- survived  —— 测试全部通过：这个 bug 没人发现，应当补一个测试；
- stale     —— 原文在文件里找不到或不唯一（代码被重构过）：这是错误，请按新代码更新 mutants.py 里那一条；
- baseline  —— 没有施加变异时这组测试就已经失败：结果没有意义，先修好测试。
有 stale / baseline 时退出码非 0。只有跑全部变异体（不带 --only）时才改写 RESULTS.md。
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.mutation.mutants import MUTANTS, Mutant
from utils.io import REPO_ROOT, atomic_write

RESULTS_FILE = REPO_ROOT / "tests" / "mutation" / "RESULTS.md"
# 工作区里 git 忽略、但测试要读的缓存：复制过去，免得每个临时副本都重新生成语料
IGNORED_DATA = ("data",)


@dataclass
class Outcome:
    mutant: Mutant
    status: str  # killed / survived / stale / baseline / timeout
    seconds: float = 0.0
    detail: str = ""


def check_mutant(root: Path, m: Mutant) -> str:
    """原文在文件里恰好出现一次、测试文件都在时返回 ""，否则返回说明（stale 的原因）。"""
    path = root / m.file
    if not path.is_file():
        return f"文件 {m.file} 不存在"
    n = path.read_text(encoding="utf-8").count(m.original)
    if n != 1:
        return f"原文在 {m.file} 里出现 {n} 次（应恰好 1 次）"
    missing = [t for t in m.tests if not (root / t.split("::")[0]).exists()]
    if missing:
        return f"测试路径不存在：{missing}"
    return ""


def copy_tree(dest: Path) -> None:
    """复制工作区里的 git 跟踪文件与未被忽略的新文件（未提交的改动一并带上），再加上忽略的数据缓存。"""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                         check=True, capture_output=True).stdout
    for rel in filter(None, out.decode("utf-8").split("\0")):
        src = REPO_ROOT / rel
        if src.is_file():  # 工作区里已删除的跟踪文件跳过
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for rel in IGNORED_DATA:
        if (REPO_ROOT / rel).is_dir():
            shutil.copytree(REPO_ROOT / rel, dest / rel, dirs_exist_ok=True)


def run_pytest(root: Path, tests: tuple[str, ...], timeout: float) -> tuple[int | None, float, str]:
    """在副本里跑 pytest，返回 (退出码或超时时的 None, 秒数, 输出的最后几行)。"""
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1",
               # 不写 .pyc：变异前后的源文件可能大小相同、mtime 落在同一秒，旧的 .pyc 会被当成有效而跳过变异
               PYTHONDONTWRITEBYTECODE="1")
    env.pop("LLM_CHECKPOINTS_DIR", None)  # 让 tests/conftest.py 给每次运行一个新的临时目录
    env.pop("LLM_DATA_DIR", None)
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", *tests]
    start = time.perf_counter()
    # 新的进程组：超时时连同 pytest 派生的子进程（多进程预分词、DDP 测试）一起结束
    # SIGINT 恢复默认：在后台（nohup、不带作业控制的 shell）启动时它被继承为"忽略"，Python 就不装 KeyboardInterrupt
    # 处理函数，测 Ctrl-C 行为的测试（test_pretrain 的 SIGINT 测试）会在副本里失败而在前台通过
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        out, _ = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        code = None
    lines = out.decode("utf-8", "replace").strip().splitlines()
    return code, time.perf_counter() - start, "\n".join(lines[-3:])


def run_mutants(mutants: list[Mutant], timeout: float) -> list[Outcome]:
    outcomes: list[Outcome] = []
    baseline: dict[tuple[str, ...], tuple[int | None, str]] = {}
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        root = Path(tmp)
        print(f"复制仓库到 {root} ……", flush=True)
        copy_tree(root)
        for i, m in enumerate(mutants, 1):
            reason = check_mutant(root, m)
            if reason:
                outcomes.append(Outcome(m, "stale", detail=reason))
                print(f"[{i}/{len(mutants)}] {m.name}: STALE —— {reason}；请按当前代码更新 tests/mutation/mutants.py",
                      flush=True)
                continue
            if m.tests not in baseline:  # 同一组测试在未变异的代码上先跑一次：它本身得是绿的
                code, _, tail = run_pytest(root, m.tests, timeout)
                baseline[m.tests] = (code, tail)
            code, tail = baseline[m.tests]
            if code != 0:
                outcomes.append(Outcome(m, "baseline", detail=f"未变异时测试就失败（退出码 {code}）：{tail}"))
                print(f"[{i}/{len(mutants)}] {m.name}: BASELINE FAILS —— {tail}", flush=True)
                continue
            path = root / m.file
            original = path.read_text(encoding="utf-8")
            try:
                path.write_text(original.replace(m.original, m.replacement), encoding="utf-8")
                code, seconds, tail = run_pytest(root, m.tests, timeout)
            finally:
                path.write_text(original, encoding="utf-8")
            # 退出码 5 = 一个测试也没收集到：没有测试就谈不上"抓到"
            status = "timeout" if code is None else "survived" if code in (0, 5) else "killed"
            outcomes.append(Outcome(m, status, seconds, tail if status == "survived" else ""))
            print(f"[{i}/{len(mutants)}] {m.name}: {status} ({seconds:.0f} s)", flush=True)
    return outcomes


def kill_rate(outcomes: list[Outcome]) -> tuple[int, int]:
    judged = [o for o in outcomes if o.status in ("killed", "timeout", "survived")]
    return sum(o.status != "survived" for o in judged), len(judged)


def render(outcomes: list[Outcome], total_seconds: float) -> str:
    killed, judged = kill_rate(outcomes)
    import torch

    lines = [
        "# 变异测试结果",
        "",
        "由 `make mutants`（`python -m tests.mutation`）生成；变异体清单见 `tests/mutation/mutants.py`。",
        "",
        f"- 日期：{dt.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        f"- 机器：{platform.platform()}，{os.cpu_count()} 个 CPU 核；Python {platform.python_version()}，"
        f"torch {torch.__version__}",
        f"- 杀死率：{killed}/{judged} = {100 * killed / max(1, judged):.1f}%（超时计为杀死），用时 {total_seconds / 60:.1f} 分钟",
        "",
        "## 存活的变异体（改坏了也没有测试失败的地方）",
        "",
    ]
    survivors = [o for o in outcomes if o.status == "survived"]
    lines += [f"- `{o.mutant.name}`（{o.mutant.file}）：{o.mutant.description}" for o in survivors] or ["无。"]
    problems = [o for o in outcomes if o.status in ("stale", "baseline")]
    if problems:
        lines += ["", "## 没能评判的变异体", ""]
        lines += [f"- `{o.mutant.name}`：{o.status}，{o.detail}" for o in problems]
    lines += ["", "## 全部变异体", "", "| 变异体 | 文件 | 结果 | 秒 | 种下的 bug |", "|---|---|---|---|---|"]
    lines += [f"| `{o.mutant.name}` | {o.mutant.file} | {o.status} | {o.seconds:.0f} | {o.mutant.description} |"
              for o in outcomes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation", description="逐个施加变异体，跑覆盖它的测试")
    parser.add_argument("--only", action="append", metavar="NAME", help="只跑这个变异体（可重复）")
    parser.add_argument("--list", action="store_true", help="列出全部变异体后退出")
    parser.add_argument("--check", action="store_true", help="只检查每个变异体的原文是否仍在代码里（不跑测试）")
    parser.add_argument("--timeout", type=float, default=900.0, help="每次 pytest 的秒数上限（默认 900）")
    args = parser.parse_args(argv)

    names = [m.name for m in MUTANTS]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SystemExit(f"mutants.py 里变异体重名：{duplicates}")
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:36s} {m.file}\n{'':36s} {m.description}\n{'':36s} 测试：{' '.join(m.tests)}")
        return 0
    selected = MUTANTS
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            raise SystemExit(f"未知的变异体：{unknown}；用 --list 查看全部名字")
        selected = [m for m in MUTANTS if m.name in args.only]
    if args.check:
        stale = [(m.name, reason) for m in selected if (reason := check_mutant(REPO_ROOT, m))]
        for name, reason in stale:
            print(f"STALE {name}: {reason}")
        print(f"{len(selected) - len(stale)}/{len(selected)} 个变异体的原文仍在代码里")
        return 1 if stale else 0

    start = time.perf_counter()
    outcomes = run_mutants(selected, args.timeout)
    total = time.perf_counter() - start
    killed, judged = kill_rate(outcomes)
    width = max(len(o.mutant.name) for o in outcomes)
    print(f"\n{'变异体':{width - 3}s}  结果      秒   种下的 bug")
    for o in outcomes:
        print(f"{o.mutant.name:{width}s}  {o.status:8s} {o.seconds:4.0f}  {o.mutant.description}")
    print(f"\n杀死率 {killed}/{judged} = {100 * killed / max(1, judged):.1f}%，用时 {total / 60:.1f} 分钟")
    if not args.only:
        atomic_write(RESULTS_FILE, render(outcomes, total))
        print(f"结果已写入 {RESULTS_FILE.relative_to(REPO_ROOT)}")
    bad = [o.mutant.name for o in outcomes if o.status in ("stale", "baseline")]
    if bad:
        print(f"错误：这些变异体没能评判（stale 或测试本身不绿）：{bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
