"""Triton kernels and their thin launchers, one module per op family.

This is the only package (with the interpreter counter in ``prompt_ops.profiling``) that imports triton. Import a
family module (``prompt_ops.kernels.dept_embed``) only when a Triton launch is actually wanted.
"""
