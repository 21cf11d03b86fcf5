"""评估的数学：loss（nats/token）与 bits/byte 的换算。预训练循环与端到端流水线共用这一份。"""

from __future__ import annotations

import math

__all__ = ["bits_per_byte"]


def bits_per_byte(loss_nats: float, bytes_per_token: float) -> float:
    """nats/token → bits/byte：除以 ln 2 变成 bits/token，再除以每 token 的平均字节数。与分词器无关，可跨词表比较。"""
    return loss_nats / math.log(2) / bytes_per_token
