"""变异测试（mutation testing）：一次往代码里种一个真实的单行 bug，看覆盖它的测试能不能抓到。

    make mutants                                  # 全部变异体，结果写进 tests/mutation/RESULTS.md
    python -m tests.mutation --list               # 列出变异体
    python -m tests.mutation --only adamw_eps_inside_sqrt --only top_p_strict_less
    python -m tests.mutation --check              # 只检查每个变异体的原文还在（重构后先跑它）

测试全绿只说明"代码做了测试检查的那些事"；变异测试反过来问"测试到底检查了什么"：
一个变异体活下来（survived），就是一个改坏了也没人发现的地方。变异体清单在 mutants.py（数据，不是测试），
本目录的文件都不叫 test_*，pytest 不会收集，`make test` 也不跑它（每个变异体要跑一遍测试，全套要几十分钟）。
"""
