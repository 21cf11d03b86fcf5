"""data_pipeline.cleaning：分词之前的数据清洗——规范化、质量过滤、语言识别、精确与近似去重、PII 遮盖，以及把它们串起来的流式流水线。

每一步一个文件，读法与分词器那几课相同：想法 → 朴素版本 → 真正用的版本 → 与工业参考（datatrove、datasketch、
pydivsufsort、py3langid）对照。
"""
