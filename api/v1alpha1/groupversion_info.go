// Package v1alpha1 is the contract of mla-operator: the MLAService API of
// group inference.mla.dev, the keys of the labels, annotations and
// environment variables that join operator, pods and workers, and the report
// a worker writes on its own pod.
// +kubebuilder:object:generate=true
// +groupName=inference.mla.dev
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the group and version of these types.
	GroupVersion = schema.GroupVersion{Group: "inference.mla.dev", Version: "v1alpha1"}

	// SchemeBuilder adds these types to a scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds these types to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
