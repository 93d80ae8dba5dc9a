"""How each student is trained: teachers and scratch students (`train`), zero-shot transfer (`zero_shot`,
the paper's Algorithm 1) and the few-shot KD+AT baseline (`kd_at`)."""
