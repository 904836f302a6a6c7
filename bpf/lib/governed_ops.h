/* Operations of governed processes beyond opens and execs (links,
 * renames, mounts, names made or removed, socket connects): who asks, the
 * names an operation involves, the checks on them and the record of a
 * decision other than a plain allow. Only governed processes (agents under
 * a policy that can deny) are held to them; links and renames by anyone
 * also carry protected names along (lib/kept_names.h). */
#pragma once

#include "file_decide.h"
#include "kept_names.h"

/* The policy in force for a hook, and who is asking. */
struct tyr_who {
	struct tyr_policy_slot *meta; /* NULL: no policy */
	__u32 slot;
	__u32 tgid;
	struct tyr_agent_class *agent;
	bool governed;
};

static __always_inline void tyr_who(struct tyr_who *who)
{
	who->slot = 0;
	who->meta = tyr_policy_in_force(&who->slot);
	who->tgid = bpf_get_current_pid_tgid() >> 32;
	who->agent = tyr_agent_of(who->tgid);
	who->governed = tyr_governed(who->agent, who->meta);
}

static __always_inline void tyr_checks_init(struct tyr_checks *c, const struct tyr_who *who, __u32 on_task)
{
	c->slot = who->slot;
	c->class = tyr_class_of(who->agent);
	c->on_task = on_task;
	c->count = 0;
	c->governed = who->governed;
	c->unnamed = 0;
}

/* Writes the identity of the file at (mnt, dentry) at s->rec + at when it
 * may differ from the name asked for; returns its length (0: none). */
static __always_inline __u32 tyr_identity_at(const struct tyr_config *cfg, struct tyr_scratch *s, __u32 on_task,
					     struct vfsmount *mnt, struct dentry *dentry, __u32 at)
{
	tyr_names_init(s, cfg->init_mnt_ns);
	tyr_name_add(s, TYR_NAME_IDENTITY, mnt, dentry, NULL);
	tyr_names_run(s, on_task, at);
	return tyr_name_len(s, 0);
}

/* Whether the process asking (filled in `who`) is governed; false too
 * when tyrd has not configured the kernel yet. */
static __always_inline bool tyr_who_governed(struct tyr_who *who)
{
	if (!tyr_config())
		return false;
	tyr_who(who);
	return who->governed;
}

/* The start of a link, rename or mount, which only governed processes
 * are held to: the scratch with its record's header filled and no names
 * added yet, or NULL with *verdict the hook's answer. */
static __always_inline struct tyr_scratch *tyr_governed_op_begin(struct tyr_who *who, __u32 op, bool anyone,
								  __u32 *on_task, int *verdict)
{
	*verdict = 0;
	struct tyr_config *cfg = tyr_config();
	if (!cfg)
		return NULL;
	tyr_who(who);
	if (!who->governed && !(anyone && who->meta))
		return NULL;
	struct tyr_scratch *s = tyr_scratch_claim(cfg, on_task);
	if (!s) {
		*verdict = tyr_undecided_file(who->meta, who->governed, TYR_KIND_FILE_WRITE, op, NULL);
		return NULL;
	}
	struct tyr_file_fixed *rec = (struct tyr_file_fixed *)s->rec;
	tyr_fill_header(&rec->hdr, TYR_REC_FILE, TYR_KIND_FILE_WRITE);
	tyr_names_init(s, cfg->init_mnt_ns);
	return s;
}

/* A name of a governed operation cut short (no room for it, or deeper
 * than the walk): what it would decide is not known, so a governed
 * process is refused (tyr_checks_run). */
static __always_inline void tyr_checks_note_truncated(struct tyr_scratch *s)
{
	if (s->names.flags & TYR_F_TRUNCATED)
		s->checks.unnamed = 1;
}

/* The names of a governed operation (its path, the other name, the file's
 * identity), resolved after the record's fixed part. */
struct tyr_op_names {
	__u32 path_len;
	__u32 name_len;
	__u32 identity_len;
	__u32 new_identity_len; /* the other name's identity (links, renames), after the others */
};

static __always_inline void tyr_governed_op_names(struct tyr_scratch *s, __u32 on_task, struct tyr_op_names *out)
{
	tyr_names_run(s, on_task, sizeof(struct tyr_file_fixed));
	out->path_len = tyr_name_len(s, 0);
	out->name_len = tyr_name_len(s, 1);
	out->identity_len = tyr_name_len(s, 2);
	out->new_identity_len = tyr_name_len(s, 3);
	((struct tyr_file_fixed *)s->rec)->hdr.flags |= s->names.flags;
}

/* Emits a link, rename or mount record decided by `c` and returns the
 * hook's verdict. Only decisions other than plain allow are recorded:
 * these operations are governed, not audited. */
static __always_inline int tyr_emit_governed_op(struct tyr_scratch *s, __u32 on_task, const struct tyr_checks *c,
						__u32 op, const struct tyr_op_names *n)
{
	bool deny = c->best.verdict == TYR_VERDICT_DENY;
	if (tyr_reportable(&c->best)) {
		struct tyr_file_fixed *rec = (struct tyr_file_fixed *)s->rec;
		__u32 kind = c->best_action == TYR_ACTION_FILE_READ ? TYR_KIND_FILE_READ : TYR_KIND_FILE_WRITE;
		rec->hdr.kind = kind;
		tyr_file_record(rec, deny ? -TYR_EPERM : 0, 0, op, n->path_len, n->name_len, n->identity_len, c);
		tyr_emit(s, sizeof(*rec), n->path_len + n->name_len + n->identity_len, kind);
	}
	tyr_scratch_release(s, on_task);
	return deny ? -TYR_EPERM : 0;
}

/* Keeps a protected name of a linked or moved file on its inode, when a
 * rule covers it: the existing file's (its identity, else its path: the
 * operation's first names), then the new one's (its identity, else the
 * name as given) — a file put at a protected name is protected too. */
static __always_inline void tyr_keep_names_of(struct tyr_scratch *s, __u32 on_task, const struct tyr_who *who,
					      struct inode *inode, const struct tyr_op_names *n)
{
	struct tyr_config *cfg = tyr_config();
	if (!cfg)
		return;
	__u32 base = sizeof(struct tyr_file_fixed);
	__u32 at = n->identity_len ? base + n->path_len + n->name_len : base;
	tyr_keep_identity(cfg, s, on_task, who->slot, inode, at, n->identity_len ? n->identity_len : n->path_len);
	__u32 new_at = n->new_identity_len ? base + n->path_len + n->name_len + n->identity_len : base + n->path_len;
	tyr_keep_identity(cfg, s, on_task, who->slot, inode, new_at,
			  n->new_identity_len ? n->new_identity_len : n->name_len);
}

/* The checks of a link's or rename's two names (and their identities): a
 * name they may not read or write may be neither taken from a file nor
 * given to one (a link to a protected file would be a way around the
 * rule; a link placed at a protected name would be one into whatever is
 * later written there). */
static __always_inline void tyr_check_both_names(struct tyr_checks *c, const struct tyr_op_names *n, __u32 how)
{
	__u32 base = sizeof(struct tyr_file_fixed);
	tyr_check_rw(c, base, n->path_len, how, TYR_DECIDED_ON_PATH);
	if (n->identity_len)
		tyr_check_rw(c, base + n->path_len + n->name_len, n->identity_len, how, TYR_DECIDED_ON_IDENTITY);
	tyr_check_rw(c, base + n->path_len, n->name_len, how, TYR_DECIDED_ON_PATH);
	if (n->new_identity_len)
		tyr_check_rw(c, base + n->path_len + n->name_len + n->identity_len, n->new_identity_len, how,
			     TYR_CHECK_ON_NEW_IDENTITY);
}

/* After the checks of a governed operation: when the new name's identity
 * decided, it is the identity the record reports. */
static __always_inline void tyr_report_new_identity(struct tyr_scratch *s, struct tyr_op_names *n)
{
	__u32 at = sizeof(struct tyr_file_fixed) + n->path_len + n->name_len;
	n->identity_len =
		tyr_report_as_identity(s, &s->checks, TYR_CHECK_ON_NEW_IDENTITY, at, n->identity_len, n->new_identity_len);
}

/* A governed process's operation on one name, decided on it and its
 * identity: the name of (mnt, dir), or of `child` below dir, or, with no
 * dir, the text `other` (other_len bytes: an abstract socket's name).
 * Decided as a write there (`how` TYR_DECIDE_SUBTREE: of a directory,
 * as everything below it), and a read too with `read_too` (a name made
 * that a later write would go through). `other` is otherwise the second
 * name the record carries (NULL: none). Returns the hook's verdict. */
static __always_inline int tyr_governed_name(__u32 op, __u32 how, bool read_too, struct vfsmount *mnt,
					     struct dentry *dir, struct dentry *child, const char *other,
					     __u64 other_len)
{
	struct tyr_who who;
	__u32 on_task = 0;
	int verdict;
	struct tyr_scratch *s = tyr_governed_op_begin(&who, op, false, &on_task, &verdict);
	if (!s)
		return verdict;
	if (how & TYR_DECIDE_SUBTREE)
		((struct tyr_file_fixed *)s->rec)->hdr.flags |= TYR_F_DIRECTORY;
	if (!dir) {
		tyr_name_add(s, TYR_NAME_STRING, NULL, other, (const void *)other_len);
		tyr_name_add(s, TYR_NAME_STRING, NULL, NULL, NULL);
	} else {
		tyr_name_add(s, child ? TYR_NAME_CHILD : TYR_NAME_PATH, mnt, dir, child);
		tyr_name_add(s, TYR_NAME_STRING, NULL, other, (const void *)other_len);
		tyr_name_add(s, child ? TYR_NAME_CHILD_IDENTITY : TYR_NAME_IDENTITY, mnt, dir, child);
	}
	struct tyr_op_names n;
	tyr_governed_op_names(s, on_task, &n);

	__u32 base = sizeof(struct tyr_file_fixed);
	struct tyr_checks *c = &s->checks;
	tyr_checks_init(c, &who, on_task);
	tyr_checks_note_truncated(s);
	__u32 at_identity = base + n.path_len + n.name_len;
	if (read_too)
		tyr_check_add(c, base, n.path_len, TYR_ACTION_FILE_READ, how, TYR_DECIDED_ON_PATH);
	tyr_check_add(c, base, n.path_len, TYR_ACTION_FILE_WRITE, how, TYR_DECIDED_ON_PATH);
	if (n.identity_len && read_too)
		tyr_check_add(c, at_identity, n.identity_len, TYR_ACTION_FILE_READ, how, TYR_DECIDED_ON_IDENTITY);
	if (n.identity_len)
		tyr_check_add(c, at_identity, n.identity_len, TYR_ACTION_FILE_WRITE, how, TYR_DECIDED_ON_IDENTITY);
	tyr_checks_run(s);
	return tyr_emit_governed_op(s, on_task, c, op, &n);
}
