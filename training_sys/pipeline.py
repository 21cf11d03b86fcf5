"""可断点续跑的阶段流水线：每个阶段留一份"指纹"，输入与产物都没变的阶段直接跳过。

一个阶段"已完成"当且仅当 stages/<阶段>.json 存在且能解析、记下的输入哈希与这次相同、
记下的每个产物文件都还在且 SHA-256 对得上。三个条件缺一个就重做——所以：

- 输入变了（换语料、改配置）→ 输入哈希不同 → 重做；
- 产物被删、被改、写到一半（进程被杀时的半个文件）→ SHA-256 对不上 → 重做；
- 指纹文件本身被截断（写指纹时断电）→ 解析失败 → 当作未完成，重做。

提交点：阶段函数返回时它的产物都已原子写完（utils.io.atomic_write：临时文件 + rename），
流水线再计算产物的 SHA-256、最后原子地写指纹。所以进程在任何时刻被杀，磁盘上都不会有"产物写了一半、
指纹却说已完成"的阶段；中断的阶段（StageInterrupted、Ctrl-C、任何异常）不写指纹，下次运行从它接着做。
（重做时留在磁盘上的旧指纹无害：它记的是旧输入或旧产物的哈希，对不上就不算完成。）

链式失效：指纹里的 "fingerprint" = 哈希(输入哈希, 每个产物的 SHA-256)，下游阶段把上游的 fingerprint
放进自己的输入。上游产物的内容一变（哪怕输入相同、只是重新生成出不同的字节），下游的输入哈希就变，
后面的阶段全部重做；上游只因产物损坏而重做（输入没变）、又生成出逐字节相同的产物时，下游照样跳过。

用法（training_sys/speedrun.py 是完整的例子）：

    pipe = Pipeline(run_dir)
    a = pipe.stage("a", {"lr": 1e-3}, lambda: ([atomic_write(run_dir / "a.txt", "...")], {"n": 1}))
    b = pipe.stage("b", {"a": a["fingerprint"]}, run_b)
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training_sys.checkpoint import sha256_file
from utils.io import atomic_write

__all__ = ["Pipeline", "StageInterrupted", "digest"]

StageFn = Callable[[], tuple[list[Path], dict[str, Any]]]


class StageInterrupted(RuntimeError):
    """一个阶段被中断（Ctrl-C 或回调）：已保存的进度留着，指纹没有写，下次运行从这里接着做。"""


def digest(obj: Any) -> str:
    """JSON 可表示的对象的 SHA-256：键排序，所以 {"a": 1, "b": 2} 与 {"b": 2, "a": 1} 的哈希相同。"""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


class Pipeline:
    """按调用顺序执行（或跳过）阶段，指纹写在 <run_dir>/stages/<阶段>.json。

    fresh=True 时先删掉全部旧指纹：每个阶段都重做（产物原地覆盖）。
    self.records 按执行顺序收集本次运行的每条记录（跳过的阶段也在，"skipped" 为 True）。
    """

    def __init__(self, run_dir: str | Path, fresh: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.stage_dir = self.run_dir / "stages"
        self.records: dict[str, dict[str, Any]] = {}
        if fresh and self.stage_dir.exists():
            shutil.rmtree(self.stage_dir)

    def record_path(self, name: str) -> Path:
        return self.stage_dir / f"{name}.json"

    def _rel(self, path: Path) -> str:
        # run_dir 里的产物记相对路径：整个运行目录搬走以后指纹照样有效
        path = Path(path).resolve()
        root = self.run_dir.resolve()
        return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)

    def _abs(self, name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() else self.run_dir / p

    def done(self, name: str, inputs: dict[str, Any]) -> dict[str, Any] | None:
        """已完成则返回记录，否则 None。记录损坏（例如被截断的 JSON）也算未完成。"""
        try:
            rec = json.loads(self.record_path(name).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        if not isinstance(rec, dict) or rec.get("inputs_digest") != digest(inputs):
            return None
        outputs = rec.get("outputs")
        if not isinstance(outputs, dict):
            return None
        for rel, sha in outputs.items():
            p = self._abs(rel)
            if not p.is_file() or sha256_file(p) != sha:
                return None
        return rec

    def stage(self, name: str, inputs: dict[str, Any], fn: StageFn) -> dict[str, Any]:
        """执行（或跳过）一个阶段。fn() 返回 (产物文件列表, 结果 dict)，结果要能写成 JSON。"""
        rec = self.done(name, inputs)
        if rec is not None:
            print(f"[{name}] 跳过：产物与指纹一致（上次用时 {rec['seconds']:.1f} s）")
            rec["skipped"] = True
            self.records[name] = rec
            return rec
        print(f"[{name}] 开始")
        t0 = time.perf_counter()
        outputs, result = fn()
        seconds = time.perf_counter() - t0
        hashes = {self._rel(p): sha256_file(Path(p)) for p in outputs}
        inputs_digest = digest(inputs)
        rec = {"stage": name, "inputs": inputs, "inputs_digest": inputs_digest, "outputs": hashes,
               "fingerprint": digest([inputs_digest, hashes]), "seconds": seconds, "result": result,
               "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")}
        # 提交点：所有产物都已原子写完，最后原子地写指纹
        atomic_write(self.record_path(name), json.dumps(rec, indent=2, ensure_ascii=False) + "\n")
        print(f"[{name}] 完成，{seconds:.1f} s")
        rec["skipped"] = False
        self.records[name] = rec
        return rec
