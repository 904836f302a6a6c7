/* File opens through the BPF LSM hook file_open: runs for every open of
 * every file, after permission checks, with the opened struct file in hand,
 * so the path is exact (bpf_d_path) and, with policy (a later stage), the
 * open can be refused with EPERM before it completes. Needs CONFIG_BPF_LSM
 * and "bpf" in the active LSM list; where that is missing this object fails
 * to load and file_syscalls.bpf.c serves instead. */
#include "lib/common.h"

SEC("lsm/file_open")
int BPF_PROG(tyr_file_open, struct file *file)
{
	struct tyr_config *cfg = tyr_config();
	if (!cfg)
		return 0;
	__u32 flags = file->f_flags;
	__u32 kind = tyr_open_kind(flags);
	if (!tyr_kind_enabled(cfg, kind))
		return 0;
	char comm[TYR_COMM_LEN];
	bpf_get_current_comm(comm, sizeof(comm));
	if (!tyr_process_selected(cfg, bpf_get_current_pid_tgid() >> 32, comm))
		return 0;
	if (!tyr_ring_has_room(cfg)) {
		tyr_count_lost(kind);
		return 0;
	}
	struct tyr_scratch *s = tyr_scratch_claim();
	if (!s) {
		tyr_count_lost(kind);
		return 0;
	}
	struct tyr_file_fixed *rec = (struct tyr_file_fixed *)s->rec;
	__u8 *data = s->rec + sizeof(*rec);
	tyr_fill_header(&rec->hdr, TYR_REC_FILE, kind);
	rec->result = 0;
	rec->open_flags = flags;
	rec->source = TYR_FILE_SOURCE_LSM;
	rec->reserved = 0;
	long n = bpf_d_path(&file->f_path, (char *)data, TYR_PATH_MAX);
	__u32 path_len = n > 1 ? n - 1 : 0;
	rec->path_len = path_len;
	rec->name_len = 0;
	tyr_emit(s, sizeof(*rec), path_len & (TYR_PATH_MAX - 1), kind);
	tyr_scratch_release(s);
	return 0;
}
