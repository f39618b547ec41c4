//! Corpus metrics: fairseq's tokenized BLEU and sacreBLEU.
//! (in progress)
