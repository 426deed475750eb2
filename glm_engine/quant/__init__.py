"""Weight-only quantization: the formats glm-engine names, and (later) quantizers and packed layouts."""
