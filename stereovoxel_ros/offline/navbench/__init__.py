"""``stereovoxel navbench``: the closed-loop benchmark, a simulated Jackal driving on the stack's map."""
