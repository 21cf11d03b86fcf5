"""inference_engine.kernels：手写内核（Triton 与 CUDA C），每个内核一个文件，注册为模型的后端。

每个文件的读法相同：内核（@triton.jit）→ 启动器（检查形状/步长/dtype，算 grid）→ autograd 包装 → 与 PyTorch 参考对照的 main()。
没有 GPU 时 runtime.py 打开 Triton 解释器（TRITON_INTERPRET=1），同样的内核在 CPU 上逐 program 执行。
"""
