package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/shoal-kv/shoal/client"
	"github.com/shoal-kv/shoal/server"
	"github.com/shoal-kv/shoal/wire"
)

// secretName is the name of a cluster's secret file beside its cluster.json.
const secretName = "secret"

// secretPath returns where the secret of the cluster whose spec is in
// specFile lives: in the same directory.
func secretPath(specFile string) string { return filepath.Join(filepath.Dir(specFile), secretName) }

// loadSecret finds a cluster's secret: the file flag names, else the one
// SHOAL_SECRET_FILE names, else the one beside specFile (if not empty). It
// checks it against spec, if not nil. Every error it returns says
// "authentication failed".
func loadSecret(flag, specFile string, spec *server.Spec) (*wire.Keyring, error) {
	path := flag
	if path == "" {
		path = os.Getenv(client.SecretFileEnv)
	}
	if path == "" && specFile != "" {
		path = secretPath(specFile)
	}
	if path == "" {
		return nil, fmt.Errorf("%w: no secret: use --secret-file FILE, %s, or --cluster FILE with the secret beside it",
			wire.ErrAuth, client.SecretFileEnv)
	}
	keys, err := wire.LoadKeyring(path)
	if err != nil {
		return nil, err
	}
	if spec != nil {
		if err := spec.CheckSecret(keys); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	return keys, nil
}

// ensureSecret makes the secret of the cluster whose spec is in specFile,
// beside it, unless it has one, and lists its key ids in spec if it lists
// none, saving it then. It returns the secret, and whether it made it.
func ensureSecret(specFile string, spec *server.Spec) (keys *wire.Keyring, made bool, err error) {
	path := secretPath(specFile)
	keys, err = wire.LoadKeyring(path)
	if errors.Is(err, fs.ErrNotExist) {
		text := wire.NewSecret()
		if err := os.WriteFile(path, text, 0o600); err != nil {
			return nil, false, err
		}
		keys, err = wire.ParseKeyring(text)
		made = true
	}
	if err != nil {
		return nil, false, err
	}
	if len(spec.SecretIDs) == 0 {
		spec.SecretIDs = keys.IDs()
		if err := spec.Save(specFile); err != nil {
			return nil, false, err
		}
	}
	return keys, made, spec.CheckSecret(keys)
}
