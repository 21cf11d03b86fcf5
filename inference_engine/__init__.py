"""inference_engine：推理这一侧的系统——手写内核（kernels/，Triton 与 CUDA C）、量化、vLLM 式推理引擎。

依赖方向（docs/ARCHITECTURE.md §3）：inference_engine 只导入 model_lab 与 utils，从不导入 training_sys；
其中 kernels/ 只依赖 utils——内核是"注册"进模型的后端注册表的，模型不 import 内核。
"""
