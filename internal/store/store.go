// Package store is where the relay server keeps its sessions: a flat
// namespace of objects (byte strings under slash-separated keys) with the
// conditional writes that make a state change happen once even when
// several server instances share the store.
//
// Two implementations pass the same conformance suite (storetest): a
// local folder, the default, and S3-compatible object storage, for
// several stateless instances behind a load balancer. Objects are small:
// a sealed chunk is at most a few megabytes, a state a few kilobytes, so
// the interface moves whole objects as byte slices.
package store

import (
	"context"
	"errors"
	"time"
)

var (
	// ErrNotFound: no object under the key.
	ErrNotFound = errors.New("store: no such object")
	// ErrPrecondition: a conditional write lost: the object exists
	// (IfNoneMatch) or is not at the expected version (IfMatch).
	ErrPrecondition = errors.New("store: precondition failed")
)

// ETag names one version of an object. Two writes of the same key never
// share an ETag, even with the same bytes.
type ETag string

// PutOptions make a write conditional. At most one is set.
type PutOptions struct {
	// IfNoneMatch creates the object only if the key is free.
	IfNoneMatch bool
	// IfMatch replaces the object only if it is at this version.
	IfMatch ETag
	// Volatile objects may be lost in a crash of the machine: the store
	// need not wait for the disk before it returns (the folder store
	// skips its fsyncs). For what can be made again, such as the chunks
	// of an answer, which a client asks for anew if they are gone.
	Volatile bool
}

// Info describes one object.
type Info struct {
	Key      string
	Size     int64
	ETag     ETag
	Modified time.Time
}

// Store holds objects. Keys are slash-separated paths of [A-Za-z0-9._-]
// segments, never starting with a dot. Every method is safe for
// concurrent use, and a write is atomic: a reader sees the old object or
// the new one, never part of one.
type Store interface {
	// Put writes data under key and returns its new version.
	Put(ctx context.Context, key string, data []byte, opt PutOptions) (ETag, error)
	// Get reads the object under key, appending it to dst[:0] (which may
	// be nil) so that callers can reuse buffers.
	Get(ctx context.Context, key string, dst []byte) ([]byte, ETag, error)
	// Stat describes the object under key.
	Stat(ctx context.Context, key string) (Info, error)
	// Delete removes the object; a missing one is not an error.
	Delete(ctx context.Context, key string) error
	// List calls fn for every object whose key starts with prefix, in key
	// order, until fn returns an error (which List returns).
	List(ctx context.Context, prefix string, fn func(Info) error) error
}

// DeletePrefix removes every object whose key starts with prefix.
func DeletePrefix(ctx context.Context, s Store, prefix string) error {
	var keys []string
	if err := s.List(ctx, prefix, func(i Info) error {
		keys = append(keys, i.Key)
		return nil
	}); err != nil {
		return err
	}
	for _, k := range keys {
		if err := s.Delete(ctx, k); err != nil {
			return err
		}
	}
	return nil
}
