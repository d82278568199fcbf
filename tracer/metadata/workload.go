package metadata

import "strings"

// Labels the controllers put on their pods, and what InferWorkload
// reports as Workload.Source.
const (
	// Deployment: its ReplicaSet is "<deployment>-<hash>", the pod
	// "<replicaset>-<5 chars>".
	LabelPodTemplateHash = "pod-template-hash"
	// StatefulSet: pods are "<statefulset>-<ordinal>" and carry both.
	LabelControllerRevisionHash = "controller-revision-hash"
	LabelStatefulSetPodName     = "statefulset.kubernetes.io/pod-name"
	// DaemonSet: pods are "<daemonset>-<5 chars>".
	LabelPodTemplateGeneration = "pod-template-generation"
	// Job: the label's value is the Job's name (job-name before 1.27, both
	// since).
	LabelJobName       = "batch.kubernetes.io/job-name"
	LabelLegacyJobName = "job-name"

	// SourceCronJobSuffix follows the job label's name in Source when a
	// Job's name ends in the CronJob controller's "-<minutes since the
	// epoch>" suffix.
	SourceCronJobSuffix = "+cronjob-suffix"
	// SourceTruncated follows pod-template-hash when the pod's name does
	// not hold the hash (kubelet truncates generated names at 58
	// characters, or the label was set by hand): the ReplicaSet's name is
	// then a guess from the pod's name.
	SourceTruncated = "+name-truncated"
	// SourcePod: no controller label, the pod is its own workload.
	SourcePod = "pod"
)

// InferWorkload names the workload of a pod from its name and labels, the
// way kubectl users name them, without owner references (CRI has none):
//
//	pod-template-hash=H, name <d>-H-xxxxx    Deployment d (via ReplicaSet d-H)
//	pod-template-hash=H, name without H      ReplicaSet, the name less its last "-xxxxx"
//	controller-revision-hash and
//	  statefulset.kubernetes.io/pod-name     StatefulSet: the pod name less "-<ordinal>"
//	controller-revision-hash and
//	  pod-template-generation                DaemonSet: the pod name less "-xxxxx"
//	batch.kubernetes.io/job-name or job-name Job (its value); CronJob when it
//	                                         ends in "-<8+ digits>" (the
//	                                         scheduled minute), named without it
//	none of these                            Pod, its own name
//
// A plain ReplicaSet's pods look like a bare pod's with a generated name,
// so they are reported as Pod: nothing in CRI tells them apart.
func InferWorkload(podName string, labels map[string]string) Workload {
	if h := labels[LabelPodTemplateHash]; h != "" {
		if i := strings.LastIndex(podName, "-"+h+"-"); i > 0 {
			return Workload{Kind: WorkloadDeployment, Name: podName[:i], Source: LabelPodTemplateHash}
		}
		return Workload{Kind: WorkloadReplicaSet, Name: trimGenerated(podName), Source: LabelPodTemplateHash + SourceTruncated}
	}
	if labels[LabelControllerRevisionHash] != "" {
		if pn := labels[LabelStatefulSetPodName]; pn != "" {
			if name, ok := trimOrdinal(pn); ok {
				return Workload{Kind: WorkloadStatefulSet, Name: name, Source: LabelStatefulSetPodName}
			}
		}
		if _, ok := labels[LabelPodTemplateGeneration]; ok {
			return Workload{Kind: WorkloadDaemonSet, Name: trimGenerated(podName), Source: LabelPodTemplateGeneration}
		}
	}
	for _, key := range [...]string{LabelJobName, LabelLegacyJobName} {
		job := labels[key]
		if job == "" {
			continue
		}
		if cron, ok := trimCronSuffix(job); ok {
			return Workload{Kind: WorkloadCronJob, Name: cron, Source: key + SourceCronJobSuffix}
		}
		return Workload{Kind: WorkloadJob, Name: job, Source: key}
	}
	return Workload{Kind: WorkloadPod, Name: podName, Source: SourcePod}
}

// Generated names: the API server appends 5 random characters to
// generateName ("<owner>-"), cut to 58 first so the name fits 63.
const (
	generatedSuffix = 5
	maxGeneratedLen = 63
)

// trimGenerated drops the "-xxxxx" that generateName appends; a name of
// the maximal length lost its dash to truncation, and its owner's name
// is the truncated prefix.
func trimGenerated(name string) string {
	if len(name) == maxGeneratedLen {
		return strings.TrimSuffix(name[:maxGeneratedLen-generatedSuffix], "-")
	}
	if i := strings.LastIndexByte(name, '-'); i > 0 {
		return name[:i]
	}
	return name
}

// trimOrdinal drops a StatefulSet pod's "-<ordinal>".
func trimOrdinal(name string) (string, bool) {
	i := strings.LastIndexByte(name, '-')
	if i <= 0 || !allDigits(name[i+1:]) {
		return "", false
	}
	return name[:i], true
}

// trimCronSuffix drops the "-<scheduled minute since the epoch>" the
// CronJob controller appends to a Job's name: 8 digits since 1989, more
// later. Fewer digits are more likely a name's own number ("backup-2").
func trimCronSuffix(job string) (string, bool) {
	i := strings.LastIndexByte(job, '-')
	if i <= 0 || len(job)-i-1 < 8 || !allDigits(job[i+1:]) {
		return "", false
	}
	return job[:i], true
}

func allDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
