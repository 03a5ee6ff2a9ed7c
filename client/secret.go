package client

import (
	"fmt"
	"os"

	"github.com/shoal-kv/shoal/wire"
)

// SecretFileEnv names the environment variable that gives the path of the
// cluster's secret file when Config names none.
const SecretFileEnv = "SHOAL_SECRET_FILE"

// keyring returns the secrets the client seals with, nil if Insecure.
func (c *Config) keyring() (*wire.Keyring, error) {
	switch {
	case c.Insecure:
		return nil, nil
	case c.Secret != nil:
		return c.Secret, nil
	case c.SecretFile != "":
		return wire.LoadKeyring(c.SecretFile)
	case os.Getenv(SecretFileEnv) != "":
		return wire.LoadKeyring(os.Getenv(SecretFileEnv))
	}
	return nil, fmt.Errorf("%w: no secret: set Config.Secret, Config.SecretFile or %s (or Insecure for a cluster run insecure)",
		ErrAuth, SecretFileEnv)
}
