"""Asking a table questions: text, image, caption, label, full-text and hybrid search, and the results."""
