"""Evaluation harness for tp-rag: BEIR retrieval, STS and performance benchmarks."""
