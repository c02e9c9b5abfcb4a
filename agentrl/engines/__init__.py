"""Inference engines behind one protocol: the embedded engine, SGLang, their Ray stand-ins, memory release and weight transport."""
