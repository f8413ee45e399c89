"""The nurse's touchscreen (PyQt6): log in, new test, result, history, QC, service."""
