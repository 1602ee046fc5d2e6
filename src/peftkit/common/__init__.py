"""What every part of peftkit shares and no part owns: atomic files (:mod:`.files`), output folders
(:mod:`.outputs`), config files as written (:mod:`.configfile`), the typed config schema
(:mod:`.schema`) and memory checks before a large allocation (:mod:`.memory`)."""
