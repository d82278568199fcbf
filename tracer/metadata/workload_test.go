package metadata

import "testing"

func TestInferWorkload(t *testing.T) {
	for _, tc := range []struct {
		name   string
		pod    string
		labels map[string]string
		want   Workload
	}{
		{"deployment", "web-7d4b9c8f6-x2x4q", map[string]string{"app": "web", "pod-template-hash": "7d4b9c8f6"},
			Workload{"Deployment", "web", "pod-template-hash"}},
		{"deployment with dashes and digits", "api-v2-gateway-5c9b8d7f4d-8m2zq", map[string]string{"pod-template-hash": "5c9b8d7f4d"},
			Workload{"Deployment", "api-v2-gateway", "pod-template-hash"}},
		{"deployment whose name holds the hash text", "a-5c9b-x-5c9b-qwert", map[string]string{"pod-template-hash": "5c9b"},
			Workload{"Deployment", "a-5c9b-x", "pod-template-hash"}},
		// generateName truncates the ReplicaSet name to 58 characters
		// generateName cut "<deployment>-6d5f8b7c9-" to 58 characters
		{"deployment, name truncated", "a-very-long-deployment-name-that-goes-on-and-on-and-on-6d5b4x2z",
			map[string]string{"pod-template-hash": "6d5f8b7c9"},
			Workload{"ReplicaSet", "a-very-long-deployment-name-that-goes-on-and-on-and-on-6d5", "pod-template-hash+name-truncated"}},
		{"daemonset, name truncated", "a-very-long-daemonset-name-that-goes-on-and-on-and-on-and-b4x2z",
			map[string]string{"controller-revision-hash": "6b8f7c9d5", "pod-template-generation": "1"},
			Workload{"DaemonSet", "a-very-long-daemonset-name-that-goes-on-and-on-and-on-and", "pod-template-generation"}},
		{"replicaset with the label, name without the hash", "cache-abcde", map[string]string{"pod-template-hash": "7f7f7f"},
			Workload{"ReplicaSet", "cache", "pod-template-hash+name-truncated"}},
		{"statefulset", "db-0", map[string]string{"controller-revision-hash": "db-5f8d6c7b9", "statefulset.kubernetes.io/pod-name": "db-0"},
			Workload{"StatefulSet", "db", "statefulset.kubernetes.io/pod-name"}},
		{"statefulset, ordinal 12, dashed name", "kafka-broker-12", map[string]string{"controller-revision-hash": "kafka-broker-7b9", "statefulset.kubernetes.io/pod-name": "kafka-broker-12"},
			Workload{"StatefulSet", "kafka-broker", "statefulset.kubernetes.io/pod-name"}},
		{"daemonset", "node-exporter-x7k2p", map[string]string{"controller-revision-hash": "6b8f7c9d5", "pod-template-generation": "3"},
			Workload{"DaemonSet", "node-exporter", "pod-template-generation"}},
		{"revision hash alone is neither", "thing-x7k2p", map[string]string{"controller-revision-hash": "6b8f7c9d5"},
			Workload{"Pod", "thing-x7k2p", "pod"}},
		{"job, 1.27+ label", "migrate-abc12", map[string]string{"batch.kubernetes.io/job-name": "migrate", "job-name": "migrate"},
			Workload{"Job", "migrate", "batch.kubernetes.io/job-name"}},
		{"job, legacy label only", "migrate-abc12", map[string]string{"job-name": "migrate"},
			Workload{"Job", "migrate", "job-name"}},
		{"job whose name ends in a small number", "backup-2-q8w7e", map[string]string{"job-name": "backup-2"},
			Workload{"Job", "backup-2", "job-name"}},
		{"cronjob", "report-29012345-q8w7e", map[string]string{"batch.kubernetes.io/job-name": "report-29012345"},
			Workload{"CronJob", "report", "batch.kubernetes.io/job-name+cronjob-suffix"}},
		{"cronjob, legacy label", "nightly-db-dump-29012345-abcde", map[string]string{"job-name": "nightly-db-dump-29012345"},
			Workload{"CronJob", "nightly-db-dump", "job-name+cronjob-suffix"}},
		{"bare pod", "debug", nil, Workload{"Pod", "debug", "pod"}},
		{"bare pod with app labels", "debug", map[string]string{"app": "x", "app.kubernetes.io/name": "x"}, Workload{"Pod", "debug", "pod"}},
		{"statefulset label with a non-ordinal pod name", "db-main", map[string]string{"controller-revision-hash": "x", "statefulset.kubernetes.io/pod-name": "db-main"},
			Workload{"Pod", "db-main", "pod"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := InferWorkload(tc.pod, tc.labels); got != tc.want {
				t.Errorf("InferWorkload(%q, %v) = %+v, want %+v", tc.pod, tc.labels, got, tc.want)
			}
		})
	}
}

func TestPodLabels(t *testing.T) {
	got := PodLabels(map[string]string{
		"app": "web", "io.kubernetes.pod.name": "p", "io.kubernetes.pod.namespace": "n", "io.kubernetes.pod.uid": "u",
		"io.cri-containerd.kind": "sandbox", "tier": "front",
	})
	if len(got) != 2 || got["app"] != "web" || got["tier"] != "front" {
		t.Errorf("PodLabels = %v, want app and tier only", got)
	}
	if got := PodLabels(map[string]string{"io.kubernetes.pod.name": "p"}); got != nil {
		t.Errorf("PodLabels of kubelet's labels only = %v, want nil", got)
	}
}
