"""inference_engine.quantization：把训练好的模型变便宜——每种量化方案一个文件，各自带中文推导。

读法：basics.py（对称/非对称、per-tensor/channel/group、RTN、SQNR）→ int8.py、int4.py（只量化权重）→
gptq.py、awq.py（用校准数据把误差压下去）→ smoothquant.py（W8A8，激活也量化）→ nf4.py（QLoRA 的 4 位数据类型）→
kv_cache.py（量化的 KV cache）→ apply.py（按 HF 名字替换 nn.Linear、保存与加载）→ __main__.py（在一个模型目录上出表）。
"""
