"""Jobs: what a run of index, caption or maintain takes (one typed spec each), its validation into ready
parts, and the one function that runs it in this process."""
