"""training_sys：训练系统——优化器与学习率调度（optimization/）、分布式、训练循环、对齐与端到端运行。"""
