"""Transformer 组件课：每个文件讲透一个组件（推导、变体、与参考实现逐位对照、图）。

目录名以数字开头，请用 importlib.import_module("model_lab.01_components.rope") 导入，
或直接运行：python model_lab/01_components/rope.py
"""
