/* The names one operation needs (the path asked for, a link's or rename's
 * other path, a mount's source, the file's identity), resolved by one
 * bpf_loop over a list of jobs in the scratch: the verifier checks one copy
 * of the path walks per program, however many names the operation has, and
 * each name is written right after the one before. */
#pragma once

#include "path.h"

#define TYR_NAME_PATH 1     /* the path of (mnt, dentry) */
#define TYR_NAME_CHILD 2    /* the path of (mnt, dentry), then "/" and child's name */
#define TYR_NAME_IDENTITY 3 /* the identity of (mnt, dentry), when it may differ; else nothing */
#define TYR_NAME_STRING 4   /* a kernel string (dentry: its address; child: its
			     * most bytes, 0 for TYR_NAME_MAX - 1) */
#define TYR_NAME_CHILD_IDENTITY 5 /* the identity of (mnt, dentry), when it may
				   * differ, then "/" and child's name; else nothing */

static __always_inline void tyr_names_init(struct tyr_scratch *s, __u32 init_mnt_ns)
{
	s->names.count = 0;
	s->names.done = 0;
	s->names.flags = 0;
	s->names.init_mnt_ns = init_mnt_ns;
}

static __always_inline void tyr_name_add(struct tyr_scratch *s, __u32 kind, const void *mnt, const void *dentry,
					 const void *child)
{
	__u32 i = s->names.count;
	if (i >= TYR_NAME_JOBS)
		return;
	s->names.count = i + 1;
	barrier_var(i); /* keeps the mask the verifier needs */
	struct tyr_name_job *job = &s->names.jobs[i & (TYR_NAME_JOBS - 1)];
	job->kind = kind;
	job->mnt = (__u64)mnt;
	job->dentry = (__u64)dentry;
	job->child = (__u64)child;
	job->len = 0;
}

/* Appends "/name" of `dentry` at s->rec + at; returns the bytes written. */
static __always_inline __u32 tyr_append_name(struct tyr_scratch *s, __u32 at, struct dentry *dentry)
{
	const unsigned char *name = BPF_CORE_READ(dentry, d_name.name);
	if (at + 1 >= TYR_BASE_LIMIT)
		return 0;
	s->rec[at & TYR_BASE_MASK] = '/';
	long n = bpf_probe_read_kernel_str(&s->rec[(at + 1) & TYR_BASE_MASK], TYR_NAME_MAX, name);
	return n > 1 ? n : 1; /* '/' plus the name, without its NUL */
}

/* ctx: the on_task of the scratch. */
static long tyr_name_step(__u64 index, void *ctx)
{
	__u32 on_task = *(__u32 *)ctx;
	struct tyr_scratch *s = tyr_scratch_entry(on_task);
	if (!s || index >= s->names.count || index >= TYR_NAME_JOBS)
		return 1;
	struct tyr_name_job *job = &s->names.jobs[index & (TYR_NAME_JOBS - 1)];
	struct vfsmount *mnt = (struct vfsmount *)job->mnt;
	struct dentry *dentry = (struct dentry *)job->dentry;
	__u32 base = s->names.at;
	if (base >= TYR_BASE_LIMIT)
		return 1;
	__u32 len = 0;
	__u32 flags = 0;
	bool child = job->kind == TYR_NAME_CHILD || job->kind == TYR_NAME_CHILD_IDENTITY;
	if (job->kind == TYR_NAME_PATH || job->kind == TYR_NAME_CHILD) {
		len = tyr_resolve_mnt_dentry(s, on_task, mnt, dentry, base, &flags);
	} else if (job->kind == TYR_NAME_IDENTITY || job->kind == TYR_NAME_CHILD_IDENTITY) {
		if (tyr_identity_may_differ(s->names.init_mnt_ns, mnt))
			len = tyr_resolve_identity(s, on_task, mnt, dentry, base);
	} else if (job->kind == TYR_NAME_STRING && job->dentry) {
		__u32 most = job->child && job->child < TYR_NAME_MAX ? job->child + 1 : TYR_NAME_MAX;
		long n = bpf_probe_read_kernel_str(&s->rec[TYR_AT(base)], most & (TYR_NAME_MAX * 2 - 1),
						   (const void *)job->dentry);
		len = n > 1 ? n - 1 : 0;
	}
	/* The child's name below the directory just named. */
	if (child && len) {
		if (len == 1)
			len = 0; /* the root: "/" + "/name" would double the slash */
		__u32 added = tyr_append_name(s, base + len, (struct dentry *)job->child);
		if (!added)
			flags |= TYR_F_TRUNCATED; /* no room left for the name */
		len += added;
	}
	job->len = len & (TYR_PATH_MAX * 2 - 1);
	s->names.at = base + job->len;
	s->names.flags |= flags;
	s->names.done = index + 1;
	return 0;
}

/* Resolves the jobs added since tyr_names_init, from s->rec + base on. */
static __always_inline void tyr_names_run(struct tyr_scratch *s, __u32 on_task, __u32 base)
{
	s->names.at = base;
	s->names.done = 0;
	bpf_loop(TYR_NAME_JOBS, tyr_name_step, &on_task, 0);
}

/* Bytes the job `i` wrote (0 for a job this operation did not add). */
static __always_inline __u32 tyr_name_len(const struct tyr_scratch *s, __u32 i)
{
	if (i >= s->names.count)
		return 0;
	return s->names.jobs[i & (TYR_NAME_JOBS - 1)].len & (TYR_PATH_MAX * 2 - 1);
}
