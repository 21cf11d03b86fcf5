"""练习目录的分册：每个区域一个文件，各自导出 EXERCISES；utils.exercise_catalog.catalog() 把它们按课程顺序合并。"""
