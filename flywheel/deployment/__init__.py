"""Deployment: the gated challenger as ONNX (and int8 where it holds accuracy), and the champion it becomes.

    deploy    ONNX export, parity check, publish and roll back under deploy/<model>/
    quantize  the int8 graph beside the fp32 one: build, check against fp32, time
    champion  the deployed model: load it, score a batch with it once, promote, roll back
"""
