from services.assistance.service import SPEC
from services.common.server import main

if __name__ == "__main__":
    main(SPEC)
