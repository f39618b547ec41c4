//! Text-side inputs: fairseq dictionaries, binarized datasets, BPE removal.
//! (in progress)
