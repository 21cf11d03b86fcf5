"""完整模型：每个文件是一个自包含的模型（"一个模型，一个文件"），与 Hugging Face 实现逐位对照。

其他包请通过门面导入：from model_lab import Llama, LlamaConfig, GPT2, GPT2Config
"""
