"""peftkit and the libraries around it: transformers' ``Trainer`` (:mod:`.trainer`), base models
from hub ids, folders, GGUF files and packaged aliases (:mod:`.models`), 4-bit bases
(:mod:`.quantization`), the hub (:mod:`.hub`)."""
