"""工程小工具：设备、随机种子、计时、张量检查（见 torch_playground.py）。

utils 不导入本项目的任何其他包（依赖方向见 README 的"目录结构"）。
"""
