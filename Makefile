# 两条命令：`make run`（主任务）与 `make test`（全部测试）。
# 第一次运行会创建 .venv 并安装依赖；之后只有 requirements.txt / pyproject.toml 变化时才重新安装
# （安装完成的标记文件名里带着这两个文件的哈希）。
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# 想要特定的 torch（例如 CPU 版 `torch==2.13.0`，或某个 CUDA 版本）时覆盖它：make test TORCH_SPEC='torch==2.13.0'
TORCH_SPEC ?= torch>=2.13
# pytest 的并行进程数（pytest-xdist）；设为 0 则单进程
JOBS ?= auto
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)

.PHONY: install run test lint smoke mutants bench-gpu exercise exercise-check exercise-status test-min clean

install: $(STAMP)

# editable_mode=compat 写一个指向仓库根目录的 .pth：以后新建的包（如 model_lab/）不必重装也能导入
$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e . --config-settings editable_mode=compat
	@rm -f $(VENV)/.installed-*
	@touch $@

run: install
	PYTHONPATH=. $(PY) -m training_sys.speedrun $(RUN_ARGS)
	@echo "报告与模型目录见上面最后两行（默认 checkpoints/shakespeare_cpu/report.md）；make run RUN_ARGS='--preset gpu' 换预设"

# make test = 先 lint（ruff，几秒），再跑全部测试
test: lint
	PYTHONPATH=. $(PY) -m pytest -n $(JOBS)

lint: install
	$(VENV)/bin/ruff check .

smoke: install
	PYTHONPATH=. $(PY) -m pytest -n $(JOBS) tests/test_smoke_scripts.py

# 依赖下限：把 requirements.txt 的每个 `>=` 换成 `==`（环境标记原样保留；torch 用 TORCH_SPEC），装进单独的
# .venv-min 再跑快速测试（-m "not slow"，不含逐个脚本的冒烟测试）——证明写下的下限真的能用。要联网装包，
# 2 核 CPU 上从零约 10 分钟；不属于 make test / CI。换测试范围：make test-min TEST_MIN_ARGS='tests/model_lab'
VENV_MIN ?= .venv-min
TEST_MIN_ARGS ?= --ignore=tests/test_smoke_scripts.py
test-min:
	@test -x $(VENV_MIN)/bin/python || python3 -m venv $(VENV_MIN)
	sed -E 's/>=/==/' requirements.txt | grep -vE '^torch([^a-z0-9_.-]|$$)' > $(VENV_MIN)/floors.txt
	$(VENV_MIN)/bin/python -m pip install "$(TORCH_SPEC)" -r $(VENV_MIN)/floors.txt
	$(VENV_MIN)/bin/python -m pip install --no-deps -e . --config-settings editable_mode=compat
	PYTHONPATH=. $(VENV_MIN)/bin/python -m pytest -n $(JOBS) -m "not slow" -p no:cacheprovider $(TEST_MIN_ARGS)

# 变异测试：逐个种下 tests/mutation/mutants.py 里的单行 bug，看测试能否抓到（几十分钟；不属于 make test）。
# 只跑几个：make mutants MUTANTS_ARGS='--only adamw_eps_inside_sqrt'；重构后先查清单：MUTANTS_ARGS=--check
mutants: install
	PYTHONPATH=. $(PY) -m tests.mutation $(MUTANTS_ARGS)

# 练习模式：make exercise EX=model_lab/01_components/rope.py 生成挖空的副本（workspace/，不进 git），
# make exercise-check EX=... 用项目自己的参考测试逐函数判分，make exercise-status 看整个课程的进度。
# （变量叫 EX 而不是 PATH：make 的 PATH=… 会覆盖 shell 的 PATH）
exercise: install
	PYTHONPATH=. $(PY) -m utils.exercises new $(EX)

exercise-check: install
	PYTHONPATH=. $(PY) -m utils.exercises check $(EX)

exercise-status: install
	PYTHONPATH=. $(PY) -m utils.exercises status

# 所有内核的 GPU 基准（Triton / CUDA C vs PyTorch），H100 级 GPU 上 8 分钟以内；没有 GPU 时只打印说明
bench-gpu: install
	PYTHONPATH=. $(PY) benchmarks/kernels_gpu.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
